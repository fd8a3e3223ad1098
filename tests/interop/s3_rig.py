"""Config tables that put ndmpd's cartridges in the test SeaweedFS (tests/s3_server.py)."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedS3


def credentials_file(directory: Path, secret: str = SECRET_KEY) -> Path:
    """An AWS shared-credentials file, mode 600, for the test identity."""
    path = directory / f"s3-credentials-{uuid.uuid4().hex[:6]}"
    path.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n")
    path.chmod(0o600)
    return path


def store_table(owner: str, server: SeaweedS3, bucket: str, credentials: Path, prefix: str = "ndmpd") -> str:
    """A ``[OWNER.store]`` table (OWNER: tape or changer) for the last [[OWNER]] table."""
    return f"""
[{owner}.store]
endpoint = "{server.endpoint}"
bucket = "{bucket}"
prefix = "{prefix}"
credentials_file = "{credentials}"
timeout = 3
part_size = "5MiB"
"""


def s3_drive(name: str, server: SeaweedS3, bucket: str, credentials: Path, capacity: str = "512MiB",
             extra: str = "") -> str:
    """A standalone virtual drive whose cartridge is NAME/ in ``bucket``."""
    return f"""
[[tape]]
name = "{name}"
capacity = "{capacity}"
{extra}""" + store_table("tape", server, bucket, credentials)


def kill_once_uploading(server: SeaweedS3, bucket: str, job: subprocess.Popen, timeout: float = 60) -> None:
    """Kill ``server`` once ``job`` (a backup to it) has a multipart upload under way and a
    part or so on disk: the store dies mid-backup."""
    deadline = time.monotonic() + timeout
    while not server.open_uploads(bucket):
        assert time.monotonic() < deadline and job.poll() is None, "the backup never started uploading"
        time.sleep(0.2)
    time.sleep(1)
    server.kill()
