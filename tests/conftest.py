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


@pytest.fixture(autouse=True)
def _s3_buckets_dropped(request):
    """A test's buckets are deleted after it, so a long run never exhausts the store."""
    yield
    if "s3_server" in request.fixturenames:
        request.getfixturevalue("s3_server").drop_made()
