"""ndmjob's tape and mover conformance series (test-tape, test-mover) against ndmpd, v2/v3/v4."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.interop

TAPE_PHASES = ["T-OC", "T-BGS", "T-BW", "T-BR", "T-BWR", "T-WRITE", "T-READ", "T-MTIO"]
MOVER_PHASES = ["M-IDLE", "M-LISTEN", "M-LISTEN/bogus-args", "M-LISTEN/not-open",
                "M-LISTEN/tape-ro", "M-LISTEN/tape-rw"]


def run_series(ndmjob_suite, server_factory, series: str, version: str, phases: list[str]) -> str:
    """Run one series against a fresh server; every phase must pass. Returns ndmjob's output."""
    server = server_factory()
    result = ndmjob_suite(series, server.agent(version), version, "-f", "vtape0")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert re.findall(r'Test (\S+) Passed -- pass=\d+ warn=0 fail=0', out) == phases, out[-3000:]
    return out


@pytest.mark.parametrize("version", ["4", "3", "2"])
def test_test_tape_passes_every_phase(ndmjob_suite, server_factory, version):
    out = run_series(ndmjob_suite, server_factory, "test-tape", version, TAPE_PHASES)
    assert re.search(r"FINAL test-tape Passed -- pass=\d+ warn=0 fail=0", out), out[-2000:]


@pytest.mark.parametrize("version", ["4", "3", "2"])
def test_test_mover_passes_every_phase_with_local_and_tcp(ndmjob_suite, server_factory, version):
    out = run_series(ndmjob_suite, server_factory, "test-mover", version, MOVER_PHASES)
    assert "FINAL test-mover Passed -- pass=100 warn=0 fail=0" in out
    assert "LOCAL and TCP addressing tested." in out
