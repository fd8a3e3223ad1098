"""Session-wide real peers shared by unit and interop tests."""

from __future__ import annotations

import pytest

from tests.s3_server import start_or_skip


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS S3 service on loopback for the session (skips with the reason without weed)."""
    server = start_or_skip(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()
