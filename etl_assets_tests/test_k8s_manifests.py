"""The Kubernetes deployment (Dockerfile, deploy/k8s/) is right without a cluster: no cluster and no Docker engine
run where these tests run, so nothing here builds the image or applies a manifest.

What is checked instead:

* deploy/k8s/dagster.yaml is a valid Dagster instance and each of its classes (K8sRunLauncher, S3ComputeLogManager,
  QueuedRunCoordinator, the daemon scheduler) accepts its config, so a misspelled key fails here;
* deploy/k8s/values.yaml, rendered the way the chart renders an instance, is that same instance. The chart's own
  values schema is not in any PyPI package (it lives in the chart's repository), so the values are checked through
  Dagster's config schemas instead: a key the chart does not render, or one Dagster does not accept, fails;
* the Dockerfile names what exists: its CMD is a real ``dagster`` command serving ``-m etl_assets``;
* end to end, on :class:`etl_assets_tests.k8s_cluster.LoopbackCluster`: the code location served by the Dockerfile's
  CMD, a run of ``shop__orders_pipeline`` launched by dagster-k8s' ``K8sRunLauncher`` built from
  deploy/k8s/dagster.yaml, and ``ETL_EXECUTOR=k8s_job`` so that the run's pod launches each step as a Job of its own.
  Every Job manifest, as the ``kubernetes`` client sent it, is validated against the Kubernetes schemas
  (kubernetes-validate, strict) of two versions, checked for image, resources and env from Secrets by reference, and
  searched for a secret value that every process involved has in its environment. The pods then run (as local
  processes) and the run must succeed, with its step logs in S3 (moto on loopback).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shlex
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import kubernetes_validate
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, deserialize_value, instance_for_test

# Dagster has no public API that checks an instance file without opening its storage; these are the functions
# DagsterInstance itself uses to read dagster.yaml and each configured class.
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._grpc.types import ExecuteRunArgs, ExecuteStepArgs
from dagster._serdes.config_class import ConfigurableClass, class_from_code_pointer
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_k8s import K8sRunLauncher
from dagster_k8s.models import k8s_snake_case_dict
from kubernetes.client import V1Volume, V1VolumeMount

from etl_assets.cli.demo import FULL_REFRESH_JOB
from etl_assets.definitions import build_definitions
from etl_assets.keys import Pipeline, pipeline_job_name
from etl_assets_demo import DemoApiServer, generate_shop_data
from etl_assets_tests.conftest import SMALL_DAYS, SMALL_ORDERS
from etl_assets_tests.k8s_cluster import LoopbackCluster, pod_env_base
from etl_assets_tests.s3server import ACCESS_KEY, S3Server, free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent  # the image's /opt/venv/bin, here
RELEASE = "dagster"  # the Helm release name docs/kubernetes.md installs with
K8S_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
JOB = pipeline_job_name(Pipeline("shop", "orders"))
PARTITION = "2024-01-02"
# A value every process of the deployment test has in its environment (as a token, a password, an AWS key) and that
# must never be written into a manifest.
SECRET = f"never-in-a-manifest-{uuid.uuid4().hex}"


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def camel_to_snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()


def snake_keys(values: dict) -> dict:
    return {camel_to_snake(key): value for key, value in values.items()}


def check_instance(config: dict, tmp_path: Path) -> None:
    """Raise if ``config`` (a dagster.yaml's content) is not an instance Dagster accepts, or if any class it names
    refuses its config (a misspelled key, a wrong type, a missing required field)."""
    home = tmp_path / f"instance-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    dagster_instance_config(str(home))
    for section in ("run_launcher", "run_coordinator", "compute_logs", "scheduler"):
        if section in config:
            klass = cast(
                "type[ConfigurableClass]", class_from_code_pointer(config[section]["module"], config[section]["class"])
            )
            result = process_config(klass.config_type(), config[section].get("config") or {})
            if not result.success:
                raise DagsterInvalidConfigError(f"{section}: {klass.__name__} refuses its config", result.errors, None)


# -- the chart's rendering of values.yaml, as its instance templates do it -----------------------------------------

# The keys the chart's K8sRunLauncher values take (runLauncher.config.k8sRunLauncher) and renders into the
# run_launcher config; anything else is not rendered, so it is refused here.
CHART_K8S_RUN_LAUNCHER_KEYS = {
    "image",
    "imagePullPolicy",
    "jobNamespace",
    "loadInclusterConfig",
    "kubeconfigFile",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
    "labels",
    "failPodOnRunFailure",
    "resources",
    "schedulerName",
    "securityContext",
    "runK8sConfig",
}


def render_instance(values: dict) -> dict:
    """The dagster.yaml the chart renders from ``values`` (release ``RELEASE``), for the sections this deployment
    sets. The chart writes the same Postgres config under run_storage, event_log_storage and schedule_storage;
    ``storage: postgres`` says the same once. Class modules are spelled as dagster.yaml spells them."""
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    unknown = set(k8s) - CHART_K8S_RUN_LAUNCHER_KEYS
    assert not unknown, f"runLauncher.config.k8sRunLauncher keys the chart does not render: {sorted(unknown)}"
    run_launcher = {camel_to_snake(key): value for key, value in k8s.items() if key != "image" and value != []}
    run_launcher["env_config_maps"] = [item["name"] for item in k8s.get("envConfigMaps", [])]
    run_launcher["env_secrets"] = [item["name"] for item in k8s.get("envSecrets", [])]
    if "image" in k8s:
        run_launcher["job_image"] = f"{k8s['image']['repository']}:{k8s['image']['tag']}"
    run_launcher.update(
        service_account_name=values["serviceAccount"]["name"],
        instance_config_map=f"{RELEASE}-instance",
        dagster_home=values["global"]["dagsterHome"],
        postgres_password_secret=values["global"]["postgresqlSecretName"],
    )
    pg = values["postgresql"]
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    logs = values["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    scheduler = values["scheduler"]
    assert scheduler["type"] == "DagsterDaemonScheduler"
    concurrency = values["concurrency"]
    assert concurrency["enabled"]
    return {
        "storage": {
            "postgres": {
                "postgres_db": {
                    "hostname": pg["postgresqlHost"],
                    "port": pg["service"]["port"],
                    "username": pg["postgresqlUsername"],
                    "db_name": pg["postgresqlDatabase"],
                    "password": {"env": "DAGSTER_PG_PASSWORD"},
                    "scheme": pg["postgresqlScheme"],
                    "params": pg["postgresqlParams"],
                }
            }
        },
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": run_launcher},
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": snake_keys(coordinator["config"]["queuedRunCoordinator"]),
        },
        "concurrency": {
            "runs": snake_keys(concurrency["runs"]),
            "pools": snake_keys(concurrency["pools"]),
        },
        "compute_logs": {
            "module": "dagster_aws.s3.compute_log_manager",
            "class": "S3ComputeLogManager",
            "config": snake_keys(logs["config"]["s3ComputeLogManager"]),
        },
        "scheduler": {
            "module": "dagster._core.scheduler",
            "class": "DagsterDaemonScheduler",
            "config": snake_keys(scheduler["config"]["daemonScheduler"]),
        },
        "run_monitoring": snake_keys(daemon["runMonitoring"]),
        "run_retries": snake_keys(daemon["runRetries"]),
        "telemetry": values["telemetry"],
    }


def normalized(instance: dict) -> dict:
    """``instance`` with Kubernetes objects in one spelling (the chart passes volumes through as written)."""
    instance = copy.deepcopy(instance)
    config = instance["run_launcher"]["config"]
    config["volumes"] = [k8s_snake_case_dict(V1Volume, v) for v in config.get("volumes", [])]
    config["volume_mounts"] = [k8s_snake_case_dict(V1VolumeMount, m) for m in config.get("volume_mounts", [])]
    return instance


@pytest.fixture
def pg_password(monkeypatch):
    # dagster.yaml reads the Postgres password from the environment; checking the file resolves it
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", SECRET)


def test_the_instance_file_is_one_dagster_accepts(tmp_path, pg_password):
    config = load("dagster.yaml")
    check_instance(config, tmp_path)
    for section, klass in (("run_launcher", K8sRunLauncher), ("compute_logs", S3ComputeLogManager)):
        assert class_from_code_pointer(config[section]["module"], config[section]["class"]) is klass
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("run_launcher", "env_secret"),
        ("compute_logs", "skip_empty"),
        ("run_coordinator", "max_concurent_runs"),
        ("run_monitoring", "poll_interval"),
    ],
)
def test_a_misspelled_key_is_refused(tmp_path, pg_password, section, key):
    config = load("dagster.yaml")
    target = config[section].get("config", config[section]) if section != "run_monitoring" else config[section]
    target[key] = target.get(key, 1)
    with pytest.raises(DagsterInvalidConfigError):
        check_instance(config, tmp_path)


def test_the_helm_values_render_the_same_instance_as_dagster_yaml(tmp_path, pg_password):
    rendered = render_instance(load("values.yaml"))
    check_instance(rendered, tmp_path)
    assert normalized(rendered) == normalized(load("dagster.yaml"))


def test_a_misspelled_helm_value_is_refused(tmp_path, pg_password):
    values = load("values.yaml")
    values["runLauncher"]["config"]["k8sRunLauncher"]["envSecret"] = [{"name": "etl-assets-secrets"}]
    with pytest.raises(AssertionError, match="envSecret"):
        render_instance(values)
    values = load("values.yaml")
    values["computeLogManager"]["config"]["s3ComputeLogManager"]["uploadIntervall"] = 30
    with pytest.raises(DagsterInvalidConfigError):
        check_instance(render_instance(values), tmp_path)


def test_the_pools_and_retries_are_those_of_the_local_instance():
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    deployed = load("dagster.yaml")
    assert deployed["concurrency"]["pools"] == local["concurrency"]["pools"]
    assert deployed["run_retries"] == local["run_retries"]
    assert deployed["scheduler"] == local["scheduler"]
    # the cluster runs more at once than a laptop, and through the queue (the daemon), not at once
    assert deployed["concurrency"]["runs"]["max_concurrent_runs"] >= local["concurrency"]["runs"]["max_concurrent_runs"]


def test_values_hold_no_secret_and_every_pod_gets_secrets_by_reference():
    values = load("values.yaml")
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["postgresqlPassword"] == ""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["envVars"] == []  # a bare name there would copy the daemon's value into every Job
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    for pod in (launcher, deployment, values["dagsterWebserver"], values["dagsterDaemon"]):
        assert {"name": "etl-assets-secrets"} in pod["envSecrets"]
        assert not pod.get("env"), "settings come from the ConfigMap etl-assets-env, secrets from the Secret"
    secret_like = re.compile(r"(TOKEN|PASSWORD|SECRET|_KEY|POSTGRES_URL)", re.IGNORECASE)
    env = load("etl-assets-env.yaml")["data"]
    assert not [name for name in env if secret_like.search(name)]


def test_the_env_config_map_is_a_valid_manifest():
    config_map = load("etl-assets-env.yaml")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(config_map, version, strict=True)
    assert config_map["metadata"]["name"] in load("dagster.yaml")["run_launcher"]["config"]["env_config_maps"]
    assert config_map["data"]["ETL_DEPLOYMENT"] == "distributed"
    assert config_map["data"]["ETL_EXECUTOR"] in ("in_process", "multiprocess", "k8s_job")


# -- the Dockerfile --------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), " ".join(line.split()[1:]))
        for line in lines
        if line and not line.startswith("#")
    ]


def dockerfile_cmd() -> list[str]:
    (cmd,) = [args for instruction, args in dockerfile_instructions() if instruction == "CMD"]
    return json.loads(cmd)  # the exec form: no shell between Kubernetes and the process


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_the_dockerfile_builds_on_python_3_11_slim_and_runs_unprivileged():
    instructions = dockerfile_instructions()
    froms = [args.split()[0] for instruction, args in instructions if instruction == "FROM"]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    (user,) = [args for instruction, args in instructions if instruction == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    run_as = load("dagster.yaml")["run_launcher"]["config"]["security_context"]["runAsUser"]
    assert int(uid) == run_as  # Kubernetes can check runAsNonRoot only against a numeric user
    # dagster-k8s and the chart start containers with args only: an ENTRYPOINT would be prepended to them
    assert "ENTRYPOINT" not in {instruction for instruction, _ in instructions}
    env = dockerfile_env()
    assert env["ETL_ENV"] == "production" and env["ETL_DEPLOYMENT"] == "distributed"
    assert env["DAGSTER_HOME"] == load("dagster.yaml")["run_launcher"]["config"]["dagster_home"]
    installs = [args for instruction, args in instructions if instruction == "RUN" and "pip install" in args]
    assert installs == ["pip install . && pip check"]  # the project, with pyproject.toml's pins


def test_the_dockerfile_copies_only_what_dockerignore_keeps():
    ignored = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    copied = []
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            copied += args.split()[:-1]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert source not in ignored, f"{source} is copied but .dockerignore leaves it out of the build context"
    for kept_out in (".venv", ".git", "data", ".dagster_home", "etl_assets_tests"):
        assert kept_out in ignored


@pytest.mark.slow  # `dagster ... --help` in a subprocess: 4-8 s here
def test_the_cmd_is_a_dagster_command_serving_this_code_location():
    cmd = dockerfile_cmd()
    assert cmd[:3] == ["dagster", "code-server", "start"]
    options = dict(zip(cmd[3::2], cmd[4::2]))
    assert options == {"-h": "0.0.0.0", "-p": "4000", "-m": "etl_assets"}
    (deployment,) = load("values.yaml")["dagster-user-deployments"]["deployments"]
    assert int(options["-p"]) == deployment["port"]
    assert deployment["codeServerArgs"] == ["-m", options["-m"]]
    expose = [args for instruction, args in dockerfile_instructions() if instruction == "EXPOSE"]
    assert expose == [options["-p"]]
    exe = BIN / cmd[0]
    out = subprocess.run([str(exe), *cmd[1:3], "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for option in ("--host", "--port", "--module-name"):
        assert option in out.stdout


# -- end to end on the loopback cluster ----------------------------------------------------------------------------


@dataclass
class Deployment:
    cluster: LoopbackCluster
    run_id: str
    image: str
    namespace: str
    status: DagsterRunStatus
    planned_steps: set[str]
    step_logs_in_s3: dict[str, str]  # step key to the stderr its pod uploaded


def image_of_values() -> str:
    (deployment,) = load("values.yaml")["dagster-user-deployments"]["deployments"]
    return f"{deployment['image']['repository']}:{deployment['image']['tag']}"


def _wait_for_code_server(port: int, env: dict[str, str], process: subprocess.Popen, log: Path) -> None:
    # the chart's readiness probe for a code server
    probe = [str(BIN / "dagster"), "api", "grpc-health-check", *("-h", "127.0.0.1", "-p", str(port))]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"code server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0:
            return
        time.sleep(1)
    raise TimeoutError(f"code server not ready after 120 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("k8s")
    home, data = root / "dagster_home", root / "data"
    home.mkdir()
    shop = generate_shop_data(data, orders=SMALL_ORDERS, days=SMALL_DAYS)
    # orders references customers and products: they are in the lake first (in process, as `etl-assets demo` does)
    (root / "preload").mkdir()
    with pytest.MonkeyPatch.context() as patch, instance_for_test(temp_dir=str(root / "preload")) as preload:
        patch.setenv("ETL_DATA_DIR", str(data))
        for name in ("ETL_PIPELINES_DIR", "ETL_ENV", "ETL_EXECUTOR"):
            patch.delenv(name, raising=False)
        assert build_definitions().resolve_job_def(FULL_REFRESH_JOB).execute_in_process(instance=preload).success
    deployed = load("dagster.yaml")
    launcher_config = deployed["run_launcher"]["config"]
    namespace = launcher_config["job_namespace"]
    bucket = deployed["compute_logs"]["config"]["bucket"]
    s3 = s3_server.client()
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=bucket)
    image = image_of_values()

    with DemoApiServer(shop.orders_path) as api:  # the orders spec sends no token (no auth: bearer)
        # What the cluster holds: the ConfigMap and Secrets deploy/k8s/ names, with this test's values. The
        # executor is k8s_job, so that the run's pod launches its steps as Jobs.
        config_maps = {
            "etl-assets-env": {
                "ETL_ENV": "production",
                "ETL_EXECUTOR": "k8s_job",
                "ETL_DATA_DIR": str(data),
                "AWS_REGION": s3_server.env()["AWS_REGION"],
                "AWS_ENDPOINT_URL": s3_server.endpoint,
            }
        }
        secrets = {
            "etl-assets-secrets": {
                "SHOP_API_URL": api.url,
                "SHOP_API_TOKEN": SECRET,
                "ETL_POSTGRES_URL": f"postgresql://etl:{SECRET}@postgres.invalid:5432/warehouse",
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET,  # moto takes any key
            },
            launcher_config["postgres_password_secret"]: {"postgresql-password": SECRET},
        }
        cluster = LoopbackCluster(
            workdir=root,
            image=image,
            config_maps=config_maps,
            secrets=secrets,
            mounts={launcher_config["dagster_home"]: str(home)},
            base_env=pod_env_base(),
        ).start()
        # The instance every process uses: deploy/k8s/dagster.yaml's run launcher (told how to reach this API
        # instead of the in-cluster config), compute logs and pools, with SQLite storage and runs started at once
        # (no daemon runs here to dequeue them).
        kubeconfig = cluster.write_kubeconfig(root / "kubeconfig", namespace)
        run_launcher = copy.deepcopy(deployed["run_launcher"])
        run_launcher["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
        instance_yaml = {
            "run_launcher": run_launcher,
            "compute_logs": deployed["compute_logs"],
            "concurrency": deployed["concurrency"],
            "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
            "telemetry": {"enabled": False},
        }
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))

        # The webserver, daemon and code server have the same Secret and ConfigMap in their environment.
        service_env = {
            **pod_env_base(),
            **config_maps["etl-assets-env"],
            **secrets["etl-assets-secrets"],
            "DAGSTER_PG_PASSWORD": SECRET,
            "DAGSTER_HOME": str(home),
        }
        # The code server exactly as the image's CMD starts it, on loopback, with the image name the chart gives it
        cmd = dockerfile_cmd()
        port = free_port()
        cmd[cmd.index("-h") + 1], cmd[cmd.index("-p") + 1] = "127.0.0.1", str(port)
        server_log = root / "code-server.log"
        with open(server_log, "wb") as out:
            server = subprocess.Popen(
                [str(BIN / cmd[0]), *cmd[1:]],
                env={**service_env, "DAGSTER_CURRENT_IMAGE": image},
                cwd=root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_for_code_server(port, service_env, server, server_log)
            (deployment_values,) = load("values.yaml")["dagster-user-deployments"]["deployments"]
            workspace = root / "workspace.yaml"
            workspace.write_text(
                yaml.safe_dump(
                    {
                        "load_from": [
                            {
                                "grpc_server": {
                                    "host": "127.0.0.1",
                                    "port": port,
                                    "location_name": deployment_values["name"],
                                }
                            }
                        ]
                    }
                )
            )
            run_id = str(uuid.uuid4())
            launch = subprocess.run(
                [
                    str(BIN / "dagster"),
                    *("job", "launch", "-w", str(workspace), "-j", JOB, "--run-id", run_id),
                    *("--tags", json.dumps({"dagster/partition": PARTITION})),
                ],
                env=service_env,
                cwd=root,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert launch.returncode == 0, launch.stdout + launch.stderr

            with pytest.MonkeyPatch.context() as patch:
                for name, value in {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": SECRET}.items():
                    patch.setenv(name, value)
                with DagsterInstance.from_config(str(home)) as instance:
                    deadline = time.monotonic() + 420
                    run = instance.get_run_by_id(run_id)
                    while run is not None and not run.is_finished and time.monotonic() < deadline:
                        time.sleep(1)
                        run = instance.get_run_by_id(run_id)
                    assert run is not None and run.is_finished, f"run not finished:\n{pod_logs(cluster)}"
                    cluster.wait_idle(120)
                    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id or "")
                    planned = set(plan.step_keys_to_execute)
                    status = run.status
                    # each step pod captured its stdout/stderr under a file key of its own
                    captured = {}
                    for record in instance.all_logs(run_id, of_type=DagsterEventType.LOGS_CAPTURED):
                        data = record.get_dagster_event().logs_captured_data
                        for step in data.step_keys or []:
                            captured[step] = data.file_key
            prefix = deployed["compute_logs"]["config"]["prefix"]
            logs = {}
            for step, file_key in captured.items():
                key = f"{prefix}/storage/{run_id}/compute_logs/{file_key}.err"
                logs[step] = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            yield Deployment(cluster, run_id, image, namespace, status, planned, logs)
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
            cluster.stop()


def pod_logs(cluster: LoopbackCluster, tail: int = 2500) -> str:
    return "\n".join(f"--- {pod.job_name} ---\n{pod.log.read_text()[-tail:]}" for pod in cluster.pods.values())


def container(job: dict) -> dict:
    (main,) = job["spec"]["template"]["spec"]["containers"]
    return main


def step_args(job: dict):
    """The ExecuteStepArgs a step Job carries (compressed, in an env var the ``dagster api execute_step`` reads)."""
    (packed,) = [e["value"] for e in container(job)["env"] if e["name"] == "DAGSTER_COMPRESSED_EXECUTE_STEP_ARGS"]
    return deserialize_value(zlib.decompress(base64.b64decode(packed)).decode(), as_type=ExecuteStepArgs)


def assert_pod_settings(job: dict, deployment: Deployment) -> None:
    """What every run and step pod must have: the code location's image, bounded resources, env by reference."""
    config = load("dagster.yaml")["run_launcher"]["config"]
    main = container(job)
    pod = job["spec"]["template"]["spec"]
    assert main["image"] == deployment.image
    assert main["imagePullPolicy"] == config["image_pull_policy"]
    assert main["resources"] == config["resources"]
    assert {"limits", "requests"} <= set(main["resources"])
    assert main["securityContext"] == config["security_context"]
    assert pod["serviceAccountName"] == config["service_account_name"]
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}]
    assert main["volumeMounts"] == [{"name": "scratch", "mountPath": "/opt/dagster/scratch"}]
    assert {"configMapRef": {"name": "etl-assets-env"}} in main["envFrom"]
    assert {"secretRef": {"name": "etl-assets-secrets"}} in main["envFrom"]
    env = {e["name"]: e for e in main["env"]}
    assert env["DAGSTER_PG_PASSWORD"] == {
        "name": "DAGSTER_PG_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": config["postgres_password_secret"], "key": "postgresql-password"}},
    }
    for name in ("SHOP_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "ETL_POSTGRES_URL", "SHOP_API_URL"):
        assert name not in env  # only through the Secret
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)


@pytest.mark.slow
def test_the_run_is_one_kubernetes_job_running_this_code_locations_run(deployment):
    (job,) = deployment.cluster.jobs("run_worker")
    assert_pod_settings(job, deployment)
    assert job["metadata"]["name"] == f"dagster-run-{deployment.run_id}"
    labels = job["metadata"]["labels"]
    assert labels["dagster/job"] == JOB and labels["dagster/run-id"] == deployment.run_id
    assert labels["dagster/code-location"] == "etl-assets"
    assert labels["app.kubernetes.io/part-of"] == "etl-assets"
    args = container(job)["args"]
    assert args[:3] == ["dagster", "api", "execute_run"]
    run_args = deserialize_value(args[3], as_type=ExecuteRunArgs)
    assert run_args.run_id == deployment.run_id
    assert run_args.job_origin.job_name == JOB
    assert getattr(run_args.job_origin.repository_origin.code_pointer, "module", None) == "etl_assets"
    assert job["spec"]["backoffLimit"] == 0  # a failed run is retried by Dagster (from failure), not by the Job


@pytest.mark.slow
def test_each_step_is_a_kubernetes_job_of_its_own(deployment):
    jobs = deployment.cluster.jobs("step_worker")
    steps = {}
    for job in jobs:
        assert_pod_settings(job, deployment)
        assert container(job)["args"][:3] == ["dagster", "api", "execute_step"]
        args = step_args(job)
        assert args.run_id == deployment.run_id
        assert getattr(args.job_origin.repository_origin.code_pointer, "module", None) == "etl_assets"
        (step,) = args.step_keys_to_execute or []
        steps[step] = job
    assert set(steps) == deployment.planned_steps
    assert {"shop__raw_orders", "shop__warehouse_orders"} <= set(steps)


@pytest.mark.slow
def test_no_secret_value_is_written_into_any_manifest(deployment):
    jobs = deployment.cluster.jobs()
    assert len(jobs) == 1 + len(deployment.planned_steps)
    for job in jobs:
        text = json.dumps(job)
        # a step's arguments travel compressed: look inside them too (the run's are plain JSON in its args)
        for var in container(job)["env"]:
            if var["name"] == "DAGSTER_COMPRESSED_EXECUTE_STEP_ARGS":
                text += zlib.decompress(base64.b64decode(var["value"])).decode()
        assert SECRET not in text, job["metadata"]["name"]


@pytest.mark.slow
def test_the_pods_ran_the_run_and_shipped_their_logs_to_s3(deployment):
    assert deployment.status == DagsterRunStatus.SUCCESS, pod_logs(deployment.cluster)
    assert all(pod.returncode == 0 for pod in deployment.cluster.pods.values()), pod_logs(deployment.cluster)
    assert set(deployment.step_logs_in_s3) == deployment.planned_steps
    for step, log in deployment.step_logs_in_s3.items():
        assert f'Finished execution of step "{step}"' in log, log[-2000:]
