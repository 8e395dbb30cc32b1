"""The landing zone on object storage (``ETL_LANDING_URL=s3://bucket/<prefix>``).

Files arrive as ``<prefix>/<dataset>/<name>``; loaded files are kept under ``<parent>/archive/<dataset>/`` and
refused ones under ``<parent>/quarantine/<dataset>/`` (with ``<name>.reason.txt``), where ``<parent>`` is the
landing prefix's parent, as the folders beside a local landing directory. A file's content key is its ETag and size
(an object is written whole, so a listed object is complete; its ETag changes with its content).

Moving a file is a copy then a delete: the copy takes exactly the version that was loaded (by version id in a
versioned bucket, else on the condition that the ETag still matches); the delete then removes that version (by
version id) or, in an unversioned bucket, the key once a HEAD still shows the loaded ETag. In an unversioned bucket a
re-delivery under the same name in the instant between that HEAD and the delete would be removed with it: turn on
versioning for the landing bucket (``etl-assets check-deployment`` says so) or deliver under unique names.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from etl_assets.objectstore import ObjectInfo, ObjectStore, parse_url
from etl_assets.settings import current_settings

ETAG_PREFIX = "etag:"


def content_key(info: ObjectInfo) -> str:
    """The content key of an object version: ``etag:<etag>`` (the run key adds the size)."""
    return f"{ETAG_PREFIX}{info.etag}"


class ObjectLanding:
    """The landing zone's listing and moves on an object store (reads go through local snapshots, see
    :meth:`etl_assets.resources.files.LandingFilesSource.pin`)."""

    def __init__(self, url: str):
        bucket, prefix = parse_url(url)
        if not prefix:
            raise ValueError(
                f"landing URL {url!r} has no prefix; write s3://{bucket}/landing (archive/ and quarantine/ go beside it)"
            )
        self.url = url.rstrip("/")
        self.store = ObjectStore(url)
        parent = str(PurePosixPath(prefix).parent)
        parent = "" if parent == "." else parent
        self.archive_store = ObjectStore(f"s3://{bucket}/{'/'.join(p for p in (parent, 'archive') if p)}")
        self.quarantine_store = ObjectStore(f"s3://{bucket}/{'/'.join(p for p in (parent, 'quarantine') if p)}")
        self.work = current_settings().data_dir.joinpath(".landing_cache", bucket, *prefix.split("/"))

    def dataset_location(self, dataset: str) -> str:
        return f"{self.url}/{dataset}/"

    def archive_location(self, dataset: str) -> str:
        return f"{self.archive_store.url}/{dataset}/"

    def list(self, dataset: str, glob: str) -> list[ObjectInfo]:
        """Objects directly in the dataset's folder whose names match ``glob``, in name order (hidden names left out;
        the caller applies the in-progress and partition filters)."""
        pattern = PurePosixPath(glob).name if "/" in glob else glob
        return sorted(
            (
                item
                for item in self.store.list(dataset)
                if not item.name.startswith(".") and fnmatch.fnmatchcase(item.name, pattern)
            ),
            key=lambda i: i.name,
        )

    def head(self, dataset: str, name: str) -> ObjectInfo | None:
        return self.store.head(self.store.key(dataset, name))

    def archived(self, dataset: str) -> list[ObjectInfo]:
        return list(self.archive_store.list(dataset))

    def move(
        self, dataset: str, name: str, expected: str | None, into: str, stamp: str, reason: str | None = None
    ) -> str | None:
        """Move ``<dataset>/<name>`` to the archive or quarantine (``into``) as ``<stamp>_<name>``: copy, then delete
        the version copied. None when it is gone, or its content key is not ``expected`` (a newer delivery of the name,
        which has its own run)."""
        info = self.head(dataset, name)
        if info is None or (expected is not None and content_key(info) != expected):
            return None
        target_store = self.archive_store if into == "archive" else self.quarantine_store
        target = target_store.key(dataset, f"{stamp}_{name}")
        if not self.store.copy(info, target):
            return None  # replaced between the HEAD and the copy: the newer version has its own run
        if reason is not None:
            target_store.put_bytes(f"{target}.reason.txt", (reason.rstrip() + "\n").encode())
        if info.version_id:
            self.store.delete(info.key, version_id=info.version_id)
        else:
            now = self.store.head(info.key)
            if now is not None and now.etag == info.etag:
                self.store.delete(info.key)
        return target_store.url_of(target)

    def expire_archived(self, dataset: str, oldest: float) -> list[str]:
        """Delete archived files last modified before ``oldest`` (a POSIX time); their names."""
        removed = []
        for item in self.archived(dataset):
            if item.last_modified.timestamp() < oldest:
                self.archive_store.delete(item.key)
                removed.append(item.name)
        return removed

    def marker_present(self, dataset: str, marker: str) -> bool:
        return self.head(dataset, marker) is not None

    def download(self, info: ObjectInfo, target: Path) -> ObjectInfo | None:
        """The listed version of ``info`` (its ETag) written to ``target``; None when it is gone or was replaced
        since it was listed (the caller lists again)."""
        return self.store.download(info.key, target, if_match=info.etag)


def mtime_ns(info: ObjectInfo) -> int:
    stamp = info.last_modified
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1e9)


ARCHIVED_STAMP_RE = re.compile(r"^\d{8}T\d{12}Z_")


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
