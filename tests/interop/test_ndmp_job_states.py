"""A job reads DATA and MOVER state on its own sessions at the end (jobs/states.py): a new
session always sees IDLE, so only the job can tell. These tests make the job's abort a no-op
against a real ndmpd, so its sessions are NOT idle after its stop: the job's own retry brings
them back (and says so), and without the retry the summary and the reason say what was left."""

from __future__ import annotations

import asyncio
import os

import pytest

from ndmpd.dma.agent import Agent
from ndmpd.dma.catalog import open_catalog
from ndmpd.dma.jobs import states as states_module
from ndmpd.dma.jobs.backup import BackupInterrupted, BackupJob, BackupRequest
from ndmpd.dma.progress import NullReporter

from .conftest import PASSWORD
from .ndmp_cli import sigint_once_bytes_flow

pytestmark = pytest.mark.interop


class Recording(NullReporter):
    """Keeps what the job reports (the log lines and the summary) for the test to read."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.fields: dict = {}

    def log(self, host: str, level: str, text: str) -> None:
        super().log(host, level, text)
        self.lines.append(text)

    def summary(self, fields: dict) -> None:
        self.fields = fields


async def _noop(*_args, **_kwargs) -> None:
    return None


def _interrupted_backup(server, tmp_path) -> tuple[Recording, str]:
    """A two-way backup SIGINTed once bytes flow, with the job's abort (and its wait for the
    halt) skipped: both sides are still ACTIVE when the job's stop ends."""
    reporter = Recording()

    async def run() -> str:
        async with Agent.connect(server.host, 10000, user="ndmp", password=PASSWORD, timeout=30) as agent:
            with open_catalog(tmp_path / "catalog.db") as cat:
                job = BackupJob(agent, agent, cat, BackupRequest("nas", "/export/data", "vtape0"),
                                reporter=reporter)
                await sigint_once_bytes_flow(asyncio.create_task(job.run()), agent, BackupInterrupted)
                [row] = cat.backups()
                return row.halt_reason or ""
    return reporter, asyncio.run(run())


def _big_volume(tmp_path) -> None:
    block = os.urandom(1 << 20)
    with open(tmp_path / "vol" / "big.bin", "wb") as f:
        for _ in range(512):
            f.write(block)


def test_a_skipped_abort_is_caught_by_the_jobs_own_state_check_and_retried(server_factory, tmp_path, monkeypatch):
    server = server_factory()
    _big_volume(tmp_path)
    monkeypatch.setattr(BackupJob, "_abort", _noop)
    monkeypatch.setattr(BackupJob, "_stop_sides", _noop)
    reporter, reason = _interrupted_backup(server, tmp_path)
    assert reporter.fields["states"] == {"data": "idle", "mover": "idle"}
    retried = [line for line in reporter.lines if "after the stop: aborted and stopped again, now idle" in line]
    assert any(line.startswith("the data side was active") for line in retried), reporter.lines
    assert reporter.warnings == [] and "SIGINT" in reason and "left" not in reason


def test_without_the_retry_the_summary_and_the_reason_say_what_was_left(server_factory, tmp_path, monkeypatch):
    server = server_factory()
    _big_volume(tmp_path)
    monkeypatch.setattr(BackupJob, "_abort", _noop)
    monkeypatch.setattr(BackupJob, "_stop_sides", _noop)
    monkeypatch.setattr(states_module, "_retry", _noop)
    reporter, reason = _interrupted_backup(server, tmp_path)
    assert reporter.fields["states"]["data"] == "active", reporter.fields
    assert reporter.fields["states"]["mover"] != "idle", reporter.fields
    assert "the data side left active" in reporter.fields["reason"]
    assert "SIGINT" in reason and "the data side left active" in reason, "the catalog keeps it with the reason"
    assert any("not IDLE" in w for w in reporter.warnings), reporter.warnings
