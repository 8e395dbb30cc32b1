"""Event-driven runs: file arrival in the landing zone, upstream pipeline success, new records behind an API watermark.

File arrival is exactly-once by construction: each file version is keyed by content (dataset, name, size,
sha256) into the run key, and Dagster launches one run per run key however often a tick is repeated (a daemon
crash between launching and saving the cursor included). The cursor only saves work: which file versions were
already requested, and which were seen last tick (a file is ready once its size and mtime stop changing).

Once a file's run has finished, ``landing_archive_sensor`` (success) or ``landing_quarantine_sensor`` (a failure the
file itself caused) moves it out of landing. They find the file through the run's tags, which anyone launching a
run can set, so the tags are checked against the loaded specs first (:func:`landing_target`).
"""

import fnmatch
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeGuard

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from etl_assets.errors import META_ERROR_CLASS, META_INPUT_AT_FAULT, PermanentSourceError
from etl_assets.keys import raw_key
from etl_assets.pipelines.spec import PipelineSpec
from etl_assets.redact import redact
from etl_assets.resources.api import ApiSource, ExtractStats, RestApiSource
from etl_assets.resources.files import IN_PROGRESS_SUFFIXES, FilesSource, LandingFile, LandingFilesSource

TAG_DATASET = "etl/landing_dataset"
TAG_FILE = "etl/landing_file"
TAG_SHA256 = "etl/landing_sha256"
# A scan looks at this many times max_files_per_tick names, so a backlog of 10,000 files costs bounded work.
SCAN_FACTOR = 5


@dataclass(frozen=True)
class ArrivalDecision:
    """What one tick decided for the files it saw."""

    ready: list[LandingFile]
    observed: dict[str, list[int]]
    requested: dict[str, list[int]]


def decide_arrivals(files: list[LandingFile], cursor: dict, max_ready: int) -> ArrivalDecision:
    """Pure tick logic: which files are stable and not yet requested, and the cursor state to keep.

    Args:
        files: The files present now (complete-looking names only).
        cursor: ``{"observed": {name: version}, "requested": {name: version}}`` of the last tick, a version being
            ``[size, mtime_ns]``, and the ETag after them for an object.
        max_ready: At most this many files become ready in one tick; the rest wait for the next.
    """
    observed_before = cursor.get("observed", {})
    requested_before = cursor.get("requested", {})
    ready, observed, requested = [], {}, {}
    for f in files:
        version = [f.size, f.mtime_ns, f.etag] if f.etag else [f.size, f.mtime_ns]
        if requested_before.get(f.name) == version:
            requested[f.name] = version
        elif observed_before.get(f.name) == version and len(ready) < max_ready:
            ready.append(f)
            requested[f.name] = version
        else:
            observed[f.name] = version
    return ArrivalDecision(ready, observed, requested)


def partition_for(name: str, source: FilesSource, partition_keys: set[str] | None) -> str | None:
    """The partition a file belongs to, from its name.

    Raises:
        PermanentSourceError: the dataset is partitioned and the name carries no valid partition key.
    """
    if partition_keys is None:
        return None
    match = re.search(source.partition_regex, name)
    if match is None:
        raise PermanentSourceError(f"{name}: no partition in the file name (pattern {source.partition_regex!r})")
    key = match.group("partition")
    if key not in partition_keys:
        raise PermanentSourceError(f"{name}: partition {key!r} is outside the dataset's partitions")
    return key


def run_key_for(dataset: str, name: str, size: int, sha256: str) -> str:
    return f"{dataset}:{name}:{size}:{sha256}"


def build_file_sensor(spec: PipelineSpec, job, pdef):
    """One sensor per files source, over its landing directory (through the landing storage resource)."""
    source = spec.source
    assert isinstance(source, FilesSource), f"{spec.ref} has no files source"
    arrival = spec.arrival

    @sensor(
        name=f"{spec.dagster_name}_file_sensor",
        job=job,
        minimum_interval_seconds=arrival.interval_seconds,
        default_status=DefaultSensorStatus.RUNNING
        if arrival.default_status == "running"
        else DefaultSensorStatus.STOPPED,
        required_resource_keys={"landing"},
        description=f"One run of {job.name} per new or changed file in landing/{spec.ref}/ ({source.glob}).",
    )
    def _sensor(context: SensorEvaluationContext):
        landing: LandingFilesSource = context.resources.landing
        if source.ready_marker and not landing.marker_present(spec.ref, source.ready_marker):
            return SkipReason(f"waiting for the marker {source.ready_marker} in {landing.dataset_location(spec.ref)}")
        files = landing.scan(spec.ref, source, limit=arrival.max_files_per_tick * SCAN_FACTOR)
        decision = decide_arrivals(
            files, json.loads(context.cursor) if context.cursor else {}, arrival.max_files_per_tick
        )
        keys = None
        if pdef is not None:
            keys = set(pdef.get_partition_keys(dynamic_partitions_store=context.instance))
        candidates = []
        for f in decision.ready:
            try:
                partition = partition_for(f.name, source, keys)
            except PermanentSourceError as exc:
                landing.quarantine(spec.ref, f.name, str(exc))
                context.log.warning(f"quarantined {f.name}: {exc}")
                continue
            sha = landing.content_key(f.path)
            candidates.append((f, partition, sha, run_key_for(spec.ref, f.name, f.size, sha)))
        loaded = {}
        if candidates:
            runs = context.instance.get_runs(
                RunsFilter(tags={"dagster/run_key": [c[3] for c in candidates]}, statuses=[DagsterRunStatus.SUCCESS])
            )
            loaded = {r.tags["dagster/run_key"]: r.run_id for r in runs}
        requests = []
        for f, partition, sha, run_key in candidates:
            if run_key in loaded:
                landing.archive(spec.ref, f.name, sha)
                context.log.info(
                    f"{f.name}: identical to the file loaded by run {loaded[run_key]}; archived without a run"
                )
                continue
            requests.append(
                RunRequest(
                    run_key=run_key,
                    partition_key=partition,
                    tags={TAG_DATASET: spec.ref, TAG_FILE: f.name, TAG_SHA256: sha},
                )
            )
        cursor = json.dumps({"observed": decision.observed, "requested": decision.requested}, sort_keys=True)
        waiting = len(decision.observed)
        skip = (
            None
            if requests
            else SkipReason(
                f"{len(files)} file(s) present, {len(decision.requested)} already requested, {waiting} not yet stable"
            )
        )
        return SensorResult(run_requests=requests, cursor=cursor, skip_reason=skip)

    return _sensor


@dataclass(frozen=True)
class LandingTarget:
    """The landing file a run's tags name, once checked against the loaded specs."""

    dataset: str
    name: str
    sha256: str


# a local file's sha256, or an object's ETag (an MD5, with the part count of a multipart upload)
_SHA256_RE = re.compile(r"[0-9a-f]{64}|etag:[0-9a-f]{32}(?:-[0-9]{1,5})?")


def plain_file_name(name: object) -> TypeGuard[str]:
    """True for a file name that names one visible entry of a directory: no path separator, NUL or control
    character, not ``.`` or ``..``, not hidden."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and not name.startswith(".")
        and not any(c in name for c in "/\\")
        and all(c >= " " and c != "\x7f" for c in name)
    )


def landing_target(tags: dict, sources: dict[str, FilesSource]) -> tuple[LandingTarget | None, str | None]:
    """The landing file a run's tags name, or why the tags are refused.

    Run tags are set by whoever launches a run, so they are not trusted as paths: the dataset must be a files
    pipeline of ``sources``, the file a plain name (:func:`plain_file_name`) matching that spec's glob and not an
    in-progress name, and the content digest a sha256 (the file sensor sets all three). The file system checks (no
    symlink, inside the dataset's landing directory, which is no symlink itself) are made by the landing resource
    when it moves the file.

    Returns:
        ``(target, None)``; ``(None, reason)`` for tags that are refused; ``(None, None)`` for a run that names no
        landing file.
    """
    if TAG_DATASET not in tags and TAG_FILE not in tags:
        return None, None
    dataset, name, sha = tags.get(TAG_DATASET), tags.get(TAG_FILE), tags.get(TAG_SHA256)
    if dataset not in sources:
        return None, f"{TAG_DATASET}={dataset!r} is not a files pipeline of this code location"
    source = sources[dataset]
    if not plain_file_name(name):
        return None, f"{TAG_FILE}={name!r} is not a plain file name"
    if not fnmatch.fnmatchcase(name, source.glob) or name.endswith(IN_PROGRESS_SUFFIXES):
        return None, f"{TAG_FILE}={name!r} does not match the glob {source.glob!r} of {dataset}"
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        return None, f"{TAG_SHA256}={sha!r} is not a sha256 digest or an object ETag"
    return LandingTarget(dataset, name, sha), None


def _value(entry):
    return getattr(entry, "value", entry)


def _failure_reason(context: RunFailureSensorContext, validate_step: str, extract_step: str) -> tuple[str, str] | None:
    """The failed step and its message when the run failed because of the file itself, so that running the same
    file again fails the same way: the extract could not read it (a permanent error of ``extract_step``), or its
    data broke the contract (a ``data_quality`` failure of ``validate_step``: a required column missing, a wrong
    delimiter, a nested value in a scalar column) and the input is to blame (``input_at_fault``, not a referenced
    dataset that is not loaded yet)."""
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        meta = user.metadata if user else {}
        error_class = _value(meta.get(META_ERROR_CLASS))
        at_fault = _value(meta.get(META_INPUT_AT_FAULT))
        unreadable = event.step_key == extract_step and error_class == "permanent"
        broke_contract = event.step_key == validate_step and error_class == "data_quality" and at_fault is not False
        if unreadable or broke_contract:
            assert event.step_key is not None  # it is the extract's or the validation's, compared above
            message = (user.description if user else None) or (data.error.message if data and data.error else "")
            return event.step_key, redact(message or "step failed")
    return None


ARCHIVE_SENSOR = "landing_archive_sensor"
QUARANTINE_SENSOR = "landing_quarantine_sensor"


def build_landing_sensors(specs: Iterable[PipelineSpec]) -> list:
    """``landing_archive_sensor`` and ``landing_quarantine_sensor`` over the files pipelines among ``specs``.

    They move the file a finished run names in its tags (set by the file sensors), after checking the tags against
    these specs (:func:`landing_target`); a run whose tags name anything else moves nothing and leaves a warning in
    the sensor's log.

    Args:
        specs: The code location's pipeline specs (those with a files source are used).
    """
    files_specs = [s for s in specs if isinstance(s.source, FilesSource)]
    sources = {s.ref: s.source for s in files_specs if isinstance(s.source, FilesSource)}
    # an asset's op is named after its key; the validation's is validate_<domain>__<name>
    steps = {s.ref: (f"validate_{s.dagster_name}", raw_key(s).to_python_identifier()) for s in files_specs}

    def checked(context) -> LandingTarget | None:
        run = context.dagster_run
        target, refused = landing_target(run.tags, sources)
        if refused:
            context.log.warning(f"run {run.run_id}: landing tags refused, no file moved: {refused}")
        return target

    @run_status_sensor(
        run_status=DagsterRunStatus.SUCCESS,
        name=ARCHIVE_SENSOR,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
        description="Moves a landing file to archive/<domain>.<name>/ once the run that loaded it succeeded.",
    )
    def landing_archive_sensor(context: RunStatusSensorContext, landing: LandingFilesSource):
        # Always None: a returned SkipReason would end the tick, leaving the other finished runs for later ticks.
        target = checked(context)
        if target is None:
            return None
        label = f"{target.dataset}/{target.name}"
        try:
            moved = landing.archive(target.dataset, target.name, target.sha256)
        except PermanentSourceError as exc:  # a symlink, or a landing directory that is one
            context.log.warning(f"run {context.dagster_run.run_id}: {label} not archived: {exc}")
            return None
        context.log.info(f"{label}: archived to {moved}" if moved else f"{label}: already gone or replaced")
        return None

    @run_failure_sensor(
        name=QUARANTINE_SENSOR,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
        description="Moves a landing file its run could not load (unreadable, or breaking the contract) to "
        "the landing zone's quarantine/<domain>.<name>/, with the reason beside it.",
    )
    def landing_quarantine_sensor(context: RunFailureSensorContext, landing: LandingFilesSource):
        target = checked(context)
        if target is None:
            return
        label = f"{target.dataset}/{target.name}"
        reason = _failure_reason(context, *steps[target.dataset])
        if reason is None:
            context.log.info(f"{label}: run failed for another reason; file left for re-execution")
            return
        step, message = reason
        try:
            moved = landing.quarantine(
                target.dataset, target.name, f"run {context.dagster_run.run_id} step {step}: {message}", target.sha256
            )
        except PermanentSourceError as exc:
            context.log.warning(f"run {context.dagster_run.run_id}: {label} not quarantined: {exc}")
            return
        context.log.info(f"{label}: quarantined to {moved} ({step})" if moved else f"{label}: already gone or replaced")

    return [landing_archive_sensor, landing_quarantine_sensor]


def build_after_sensor(spec: PipelineSpec, job, upstream_jobs: list):
    """Runs ``spec``'s pipeline after a successful run of each pipeline it names in ``after``."""

    @run_status_sensor(
        run_status=DagsterRunStatus.SUCCESS,
        name=f"{spec.dagster_name}_after_sensor",
        monitored_jobs=upstream_jobs,
        request_job=job,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=10,
        description=f"{spec.ref} after {', '.join(spec.resolve(a) for a in spec.after)} succeeds.",
    )
    def _sensor(context: RunStatusSensorContext) -> Iterator[RunRequest]:
        run = context.dagster_run
        partition = run.tags.get("dagster/partition") if spec.partitions.type != "none" else None
        yield RunRequest(
            run_key=f"after:{run.run_id}", partition_key=partition, tags={"etl/triggered_by_run": run.run_id}
        )

    return _sensor


def build_watermark_sensor(spec: PipelineSpec, job, pdef, resource_key: str):
    """For an incremental API source: ask the API for records newer than the last watermark; run only then.

    The cursor holds the last watermark seen. New records are listed with ``updated_since`` (bounded pages) to
    find which partitions they fall in; one run per affected partition. An unpartitioned pipeline gets one run
    whenever the watermark endpoint reports a newer watermark.
    """
    source = spec.source
    assert isinstance(source, ApiSource), f"{spec.ref} has no api source"
    time_column = spec.partitions.column
    max_pages = 20

    @sensor(
        name=f"{spec.dagster_name}_watermark_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        required_resource_keys={resource_key},
        description=f"Runs {job.name} for the partitions whose records changed since the last watermark.",
    )
    def _sensor(context: SensorEvaluationContext):
        api: RestApiSource = getattr(context.resources, resource_key)
        watermark = context.cursor
        if watermark is None:
            return SensorResult(
                cursor=_current_watermark(api, spec), skip_reason=SkipReason("first tick: watermark recorded")
            )
        if time_column is None:  # unpartitioned: one run whenever the watermark moves
            current = _current_watermark(api, spec)
            if not current or current == watermark:
                return SkipReason(f"watermark unchanged since {watermark}")
            return SensorResult(run_requests=[RunRequest(run_key=f"{spec.ref}:{current}")], cursor=current)
        stats = ExtractStats()
        partitions: set[str] = set()
        with_limit = source.model_copy(update={"pagination": source.pagination.model_copy(update={"page_size": 1000})})
        for index, batch in enumerate(api.extract(with_limit, [time_column], updated_since=watermark, stats=stats)):
            partitions.update(v[:10] for v in batch.column(time_column).to_pylist() if v)
            if index + 1 >= max_pages:
                break
        if not partitions:
            return SkipReason(f"no records updated since {watermark}")
        valid = set(pdef.get_partition_keys()) if pdef is not None else set()
        requests = [
            RunRequest(run_key=f"{spec.ref}:{p}:{stats.max_watermark}", partition_key=p)
            for p in sorted(partitions)
            if p in valid
        ]
        return SensorResult(run_requests=requests, cursor=stats.max_watermark or watermark)

    return _sensor


def _current_watermark(api: RestApiSource, spec: PipelineSpec) -> str:
    source = spec.source
    assert isinstance(source, ApiSource), f"{spec.ref} has no api source"
    incremental = source.incremental
    # the sensor is built only for a source with a watermark endpoint (factory._build_pipelines)
    assert incremental is not None and incremental.watermark_endpoint is not None
    stats = ExtractStats()
    with api.client(source) as client:
        body = api.get_json(
            client,
            incremental.watermark_endpoint,
            None,
            stats,
            source.deadline_seconds(),
            max_bytes=source.max_page_bytes,
        )
    return body.get(incremental.watermark_field) or ""
