"""Object storage (the S3 API) for the lake and the landing zone of a deployment across hosts.

A location is ``s3://bucket/prefix``; the endpoint and credentials come from the standard AWS variables
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible server, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` or any other source of boto3's credential chain, ``AWS_REGION``), never from a spec.

Why boto3 and whole-object transfers, not a file system registered on DuckDB: a reader through a file system
(pyarrow's S3FileSystem, s3fs on a DuckDB connection) reads a Parquet file with several ranged GETs, footer first,
and an object replaced between two of them gives a read that mixes two versions. A single GET returns one version
with its ETag, so every read here downloads the whole object once into a local cache keyed by that ETag (or the
object's immutable generation name) and DuckDB reads the local copy: each step sees one version of every input,
as the hard links do on a local lake. Writes are one PUT of the finished object (a multipart upload is invisible
until it completes), so a reader never sees half an object. boto3 also gives what a file system hides: ETags for
content keys, version ids and conditional copies for moving landing files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

S3_SCHEME = "s3://"
# Objects up to this size go up in one PUT whose response carries their ETag; larger ones as a multipart upload.
SINGLE_PUT_BYTES = 64 << 20
PART_BYTES = 16 << 20
_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


class ObjectStoreError(RuntimeError):
    """An object store location or request cannot be used; the message says what to do."""


def is_object_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(S3_SCHEME)


@dataclass(frozen=True)
class ObjectInfo:
    """One object as listed: its key, size, ETag (without quotes), last modification and version id."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    version_id: str | None = None

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end).

    Raises:
        ObjectStoreError: the URL is not an ``s3://`` URL with a bucket name.
    """
    if not is_object_url(url):
        raise ObjectStoreError(f"{url!r} is not an object store URL; write s3://bucket/prefix")
    rest = url[len(S3_SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if not bucket or any(c in bucket for c in " \\?#"):
        raise ObjectStoreError(f"{url!r} names no valid bucket; write s3://bucket/prefix")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ObjectStoreError(f"{url!r}: the prefix may not hold empty, '.' or '..' parts")
    return bucket, prefix


def client():
    """A boto3 S3 client for the environment's endpoint and credentials, one per process and settings.

    Retries: botocore's standard mode (throttling and 5xx with backoff, 5 attempts), so a transient fault of the
    store is retried inside the request; what still fails surfaces as an error of the step and its retry policy.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    key = (endpoint, region, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"), os.getpid())
    with _clients_lock:
        if key not in _clients:
            import boto3.session
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "max_attempts": 5},
                connect_timeout=10,
                read_timeout=60,
                # path-style addressing works with every S3-compatible server; AWS accepts it too
                s3={"addressing_style": "path"},
            )
            _clients[key] = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name=region, config=config
            )
        return _clients[key]


def _etag(value: str | None) -> str:
    return (value or "").strip('"')


class ObjectStore:
    """Objects under one ``s3://bucket/prefix``; keys given to the methods are relative to the prefix."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_url(url)

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def url_of(self, key: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{key}"

    def _errors(self, action: str, key: str):
        return _ObjectErrors(self, action, key)

    def list(self, *parts: str, recursive: bool = False) -> Iterator[ObjectInfo]:
        """Objects directly under ``parts`` (every level below with ``recursive``), in key order."""
        prefix = self.key(*parts)
        prefix = prefix + "/" if prefix else ""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if not recursive:
            kwargs["Delimiter"] = "/"
        with self._errors("list", prefix):
            for page in client().get_paginator("list_objects_v2").paginate(**kwargs):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"], item["Size"], _etag(item.get("ETag")), item["LastModified"])

    def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            with self._errors("head", key):
                response = client().head_object(Bucket=self.bucket, Key=key)
        except ObjectStoreError as exc:
            if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        version = response.get("VersionId")
        return ObjectInfo(
            key,
            response["ContentLength"],
            _etag(response.get("ETag")),
            response["LastModified"],
            None if version in (None, "null") else version,
        )

    def download(self, key: str, target: Path, if_match: str | None = None) -> ObjectInfo | None:
        """Write the object to ``target`` with one GET (one version, whatever replaces it meanwhile); None when the
        object is gone (or, with ``if_match``, has another ETag now). The file appears complete or not at all."""
        from botocore.exceptions import ClientError

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_match:
            kwargs["IfMatch"] = f'"{if_match}"'
        try:
            with self._errors("get", key):
                response = client().get_object(**kwargs)
                with open(tmp, "wb") as fh:
                    shutil.copyfileobj(response["Body"], fh, 1 << 20)
            os.replace(tmp, target)
        except ObjectStoreError as exc:
            if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) in (
                "404",
                "NoSuchKey",
                "PreconditionFailed",
                "412",
            ):
                return None
            raise
        finally:
            tmp.unlink(missing_ok=True)
        version = response.get("VersionId")
        return ObjectInfo(
            key,
            response["ContentLength"],
            _etag(response.get("ETag")),
            response["LastModified"],
            None if version in (None, "null") else version,
        )

    def upload(self, source: Path, key: str) -> str:
        """PUT the finished file ``source`` as ``key`` (replacing it whole); returns the object's ETag.

        Up to :data:`SINGLE_PUT_BYTES` one PUT (the ETag from its response); beyond, a multipart upload of
        :data:`PART_BYTES` parts, whose ETag S3 derives from the parts' MD5s: computed here from the same parts, so it
        names this content whatever another writer puts over the key afterwards (a different content has another).
        """
        import base64

        size = source.stat().st_size
        with self._errors("put", key):
            if size <= SINGLE_PUT_BYTES:
                with open(source, "rb") as fh:
                    digest = hashlib.md5(usedforsecurity=False)
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                    fh.seek(0)
                    response = client().put_object(
                        Bucket=self.bucket, Key=key, Body=fh, ContentMD5=base64.b64encode(digest.digest()).decode()
                    )
                return _etag(response.get("ETag"))
            from boto3.s3.transfer import TransferConfig

            config = TransferConfig(multipart_threshold=SINGLE_PUT_BYTES, multipart_chunksize=PART_BYTES)
            client().upload_file(str(source), self.bucket, key, Config=config)
        parts = []
        with open(source, "rb") as fh:
            for block in iter(lambda: fh.read(PART_BYTES), b""):
                parts.append(hashlib.md5(block, usedforsecurity=False).digest())
        return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"

    def put_bytes(self, key: str, data: bytes) -> str:
        with self._errors("put", key):
            return _etag(client().put_object(Bucket=self.bucket, Key=key, Body=data).get("ETag"))

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag (one GET), or None when it is gone."""
        from botocore.exceptions import ClientError

        try:
            with self._errors("get", key):
                response = client().get_object(Bucket=self.bucket, Key=key)
                return response["Body"].read(), _etag(response.get("ETag"))
        except ObjectStoreError as exc:
            if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) in ("404", "NoSuchKey"):
                return None
            raise

    def copy(self, source: ObjectInfo, key: str) -> bool:
        """Server-side copy of exactly the version ``source`` describes (by version id, or by ETag), to ``key``;
        False when that version is gone or was replaced."""
        from botocore.exceptions import ClientError

        copy_source: dict[str, str] = {"Bucket": self.bucket, "Key": source.key}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "CopySource": copy_source}
        if source.version_id:
            copy_source["VersionId"] = source.version_id
        else:
            kwargs["CopySourceIfMatch"] = f'"{source.etag}"'
        try:
            with self._errors("copy", source.key):
                if source.size > 5 << 30:  # one CopyObject copies at most 5 GB; the managed copy splits it
                    client().copy(copy_source, self.bucket, key)
                else:
                    client().copy_object(**kwargs)
            return True
        except ObjectStoreError as exc:
            if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) in (
                "404",
                "NoSuchKey",
                "PreconditionFailed",
                "412",
                "NoSuchVersion",
            ):
                return False
            raise

    def delete(self, key: str, version_id: str | None = None) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        with self._errors("delete", key):
            client().delete_object(**kwargs)

    def versioned(self) -> bool:
        """Whether the bucket keeps versions (then a landing file is moved by its version id, exactly)."""
        with self._errors("get versioning of", ""):
            return client().get_bucket_versioning(Bucket=self.bucket).get("Status") == "Enabled"

    def check(self) -> None:
        """Raise :class:`ObjectStoreError` unless the bucket answers (used at start and by check-deployment)."""
        with self._errors("reach", ""):
            client().head_bucket(Bucket=self.bucket)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _ObjectErrors:
    """Turns botocore's errors into :class:`ObjectStoreError` naming the location (never a credential)."""

    def __init__(self, store: ObjectStore, action: str, key: str):
        self.store, self.action, self.key = store, action, key

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, ObjectStoreError):
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            code = _code(exc)
            message = (exc.response.get("Error", {}) or {}).get("Message", "") if exc.response else ""
            hint = {
                "NoSuchBucket": "create the bucket or fix the URL",
                "AccessDenied": "grant the credentials access to the bucket",
                "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID",
                "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY",
                "403": "grant the credentials access to the bucket",
            }.get(code, "check the endpoint (AWS_ENDPOINT_URL), the credentials and the bucket")
            raise ObjectStoreError(
                f"{self.store.url_of(self.key)}: cannot {self.action} ({code} {message}); {hint}"
            ) from exc
        if isinstance(exc, BotoCoreError):
            raise ObjectStoreError(
                f"{self.store.url_of(self.key)}: cannot {self.action} ({type(exc).__name__}: {exc}); "
                "check that the endpoint (AWS_ENDPOINT_URL) answers and the credentials are set"
            ) from exc
        return False
