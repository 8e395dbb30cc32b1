"""A real S3-compatible server on loopback for the tests: ``moto_server`` (moto[server] from PyPI) in a subprocess.

The platform talks to it as it would to any S3 endpoint, through the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``); nothing in the client is mocked.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "etl-test-access"
SECRET_KEY = "etl-test-secret-value"
REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    """``moto_server`` listening on ``host:port`` until :meth:`stop`."""

    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment a client (the platform, boto3, dagster-aws) needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }

    def start(self, log: Path | None = None) -> S3Server:
        self.port = self.port or free_port(self.host)
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [exe, "-H", self.host, "-p", str(self.port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode} before it listened")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not listen on {self.endpoint} within 60 s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def new_bucket(self, prefix: str = "etl") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def apply_env(server: S3Server, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: a copy of os.environ) with the server's variables set."""
    merged = dict(os.environ if environ is None else environ)
    merged.update(server.env())
    return merged
