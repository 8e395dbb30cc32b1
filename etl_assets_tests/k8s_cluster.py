"""A stand-in for a Kubernetes cluster on loopback, for tests that cannot reach a real one (none runs here).

:class:`LoopbackCluster` answers the few Kubernetes API calls dagster-k8s makes (create a Job, read its status,
list its pods, delete it) over HTTP, so the real ``kubernetes`` client sends it exactly the JSON it would send a
cluster. It keeps every Job it was sent, as sent. Like a kubelet it then starts each Job's pod: the container's
``args`` as a local process (the image is this virtual environment, so ``dagster`` is on its ``PATH``), with the
environment Kubernetes would give it, resolved from the ConfigMaps and Secrets it was set up with (``env`` values,
``valueFrom`` references, ``envFrom``). A pod whose image is not the expected one, or whose ConfigMap, Secret or key
is missing, does not start, as in a cluster. The Job's status follows the process: active, then succeeded or failed.

What a real cluster has and this has not: scheduling, resource limits, volumes (except the instance home, below),
admission and API-server validation (the tests validate every manifest against the Kubernetes schemas instead).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

HOST = "127.0.0.1"
JOBS_PATH = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/]+)(?P<status>/status)?)?$")
PODS_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")


class PodRefused(Exception):
    """The pod cannot start: what a kubelet reports as ErrImagePull or CreateContainerConfigError."""


@dataclass
class Pod:
    """One Job's pod: the process running its container and where its output went."""

    job_name: str
    namespace: str
    manifest: dict
    log: Path
    process: subprocess.Popen | None = None
    refused: str | None = None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def status(self) -> dict:
        if self.refused is not None:
            return {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": self.refused[:60]}]}
        code = self.returncode
        if code is None:
            return {"active": 1}
        return {"succeeded": 1} if code == 0 else {"failed": 1}


@dataclass
class LoopbackCluster:
    """A Kubernetes API on ``127.0.0.1`` that runs the pods of the Jobs it is sent as local processes.

    Args:
        workdir: Where pods' logs and the kubeconfig are written (pods run with it as working directory).
        image: The only image a pod may use; any other is refused as a failed pull.
        config_maps: ConfigMap name to its data, for ``envFrom.configMapRef`` and ``configMapKeyRef``.
        secrets: Secret name to its data, for ``envFrom.secretRef`` and ``secretKeyRef``.
        mounts: Path inside the pod to a local path, replacing that prefix in the pod's environment (how the
            instance ConfigMap mounted at ``DAGSTER_HOME`` appears here).
        base_env: The image's own environment (``PATH`` first).
    """

    workdir: Path
    image: str
    config_maps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, str]]
    mounts: dict[str, str]
    base_env: dict[str, str]
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)
    received: list[dict] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the cluster first"
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> LoopbackCluster:
        cluster = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 (the base class's name)
                return

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                match = JOBS_PATH.match(urlparse(self.path).path)
                if not match or match["name"]:
                    return self._reply(404, _status(404, f"no route {self.path}"))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                code, reply = cluster._create_job(match["ns"], body)
                self._reply(code, reply)

            def do_GET(self):
                url = urlparse(self.path)
                if match := JOBS_PATH.match(url.path):
                    if match["name"]:
                        return self._reply(*cluster._read_job(match["ns"], match["name"]))
                    return self._reply(200, cluster._list_jobs(match["ns"], parse_qs(url.query)))
                if match := PODS_PATH.match(url.path):
                    return self._reply(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
                self._reply(404, _status(404, f"no route {self.path}"))

            def do_DELETE(self):
                match = JOBS_PATH.match(urlparse(self.path).path)
                if not match or not match["name"]:
                    return self._reply(404, _status(404, f"no route {self.path}"))
                self._reply(*cluster._delete_job(match["ns"], match["name"]))

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="loopback-k8s-api", daemon=True).start()
        return self

    def stop(self) -> None:
        for pod in list(self.pods.values()):
            if pod.process and pod.process.poll() is None:
                pod.process.terminate()
                try:
                    pod.process.wait(10)
                except subprocess.TimeoutExpired:
                    pod.process.kill()
                    pod.process.wait()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        """A kubeconfig for this API (a bearer token that is no secret: the API checks none)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "loopback", "cluster": {"server": self.url}}],
            "users": [{"name": "loopback", "user": {"token": "loopback-cluster-no-auth"}}],
            "contexts": [
                {"name": "loopback", "context": {"cluster": "loopback", "user": "loopback", "namespace": namespace}}
            ],
            "current-context": "loopback",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def jobs(self, component: str | None = None) -> list[dict]:
        """The Jobs received, as sent, optionally only those labelled ``app.kubernetes.io/component``."""
        with self._lock:
            return [
                copy.deepcopy(job)
                for job in self.received
                if component is None or job["metadata"]["labels"].get("app.kubernetes.io/component") == component
            ]

    def wait_idle(self, timeout: float) -> None:
        """Wait until no pod is running (the run's pod and every step pod it started have ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                running = [p for p in self.pods.values() if p.process and p.process.poll() is None]
            if self.pods and not running:
                return
            time.sleep(0.5)
        raise TimeoutError(f"pods still running after {timeout} s: {[p.job_name for p in running]}")

    # -- the API --------------------------------------------------------------------------------------------------

    def _create_job(self, namespace: str, body: dict) -> tuple[int, dict]:
        name = body["metadata"]["name"]
        with self._lock:
            if (namespace, name) in self.pods:
                return 409, _status(409, f'jobs.batch "{name}" already exists')
            self.received.append(copy.deepcopy(body))
            pod = Pod(name, namespace, body, self.workdir / f"{name}.log")
            self.pods[(namespace, name)] = pod
        try:
            self._start_pod(pod)
        except PodRefused as refused:
            pod.refused = str(refused)
            pod.log.write_text(f"pod refused: {refused}\n")
        return 201, self._job_object(pod)

    def _read_job(self, namespace: str, name: str) -> tuple[int, dict]:
        pod = self.pods.get((namespace, name))
        if pod is None:
            return 404, _status(404, f'jobs.batch "{name}" not found')
        return 200, self._job_object(pod)

    def _list_jobs(self, namespace: str, query: dict[str, list[str]]) -> dict:
        selector = (query.get("fieldSelector") or [""])[0]
        wanted = selector.removeprefix("metadata.name=") if selector.startswith("metadata.name=") else None
        items = [
            self._job_object(pod)
            for (ns, name), pod in self.pods.items()
            if ns == namespace and (wanted is None or name == wanted)
        ]
        return {"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": items}

    def _delete_job(self, namespace: str, name: str) -> tuple[int, dict]:
        pod = self.pods.get((namespace, name))
        if pod is None:
            return 404, _status(404, f'jobs.batch "{name}" not found')
        if pod.process and pod.process.poll() is None:
            pod.process.terminate()
        return 200, {"apiVersion": "v1", "kind": "Status", "status": "Success"}

    def _job_object(self, pod: Pod) -> dict:
        job = copy.deepcopy(pod.manifest)
        job.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid5(uuid.NAMESPACE_URL, pod.job_name)))
        job["metadata"]["namespace"] = pod.namespace
        job["status"] = pod.status()
        return job

    # -- the kubelet ----------------------------------------------------------------------------------------------

    def _start_pod(self, pod: Pod) -> None:
        spec = pod.manifest["spec"]["template"]["spec"]
        container = spec["containers"][0]
        if container.get("image") != self.image:
            raise PodRefused(f"ErrImagePull: {container.get('image')!r} is not {self.image!r}")
        env = dict(self.base_env)
        for source in container.get("envFrom") or []:
            env.update(self._env_source(source))
        for var in container.get("env") or []:
            env[var["name"]] = self._env_value(var)
        for inside, outside in self.mounts.items():
            env = {k: v.replace(inside, outside) if v.startswith(inside) else v for k, v in env.items()}
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not argv:
            raise PodRefused("no command and no args: the image has no ENTRYPOINT to fall back on")
        with open(pod.log, "wb") as out:
            pod.process = subprocess.Popen(
                argv, env=env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _env_source(self, source: dict) -> dict[str, str]:
        if "configMapRef" in source:
            kind, ref, store = "ConfigMap", source["configMapRef"], self.config_maps
        elif "secretRef" in source:
            kind, ref, store = "Secret", source["secretRef"], self.secrets
        else:
            raise PodRefused(f"CreateContainerConfigError: unknown envFrom source {sorted(source)}")
        if ref["name"] not in store:
            if ref.get("optional"):
                return {}
            raise PodRefused(f'CreateContainerConfigError: {kind.lower()} "{ref["name"]}" not found')
        prefix = source.get("prefix", "")
        return {prefix + key: value for key, value in store[ref["name"]].items()}

    def _env_value(self, var: dict) -> str:
        if "value" in var:
            return var["value"] if var["value"] is not None else ""
        ref = var.get("valueFrom") or {}
        for key, kind, store in (
            ("secretKeyRef", "secret", self.secrets),
            ("configMapKeyRef", "configmap", self.config_maps),
        ):
            if key in ref:
                name, item = ref[key]["name"], ref[key]["key"]
                if item not in store.get(name, {}):
                    raise PodRefused(f'CreateContainerConfigError: {kind} "{name}" has no key "{item}"')
                return store[name][item]
        raise PodRefused(f"CreateContainerConfigError: env {var['name']} has neither value nor a known valueFrom")


def _status(code: int, message: str) -> dict:
    reason = {404: "NotFound", 409: "AlreadyExists"}.get(code, "BadRequest")
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def pod_env_base() -> dict[str, str]:
    """The environment every pod starts from: the image's ``PATH`` (this virtual environment first), no proxy."""
    import sys

    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join([venv_bin, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "NO_PROXY": HOST,
        "no_proxy": HOST,
    }
