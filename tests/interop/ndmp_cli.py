"""Running ``ndmp`` (``python -m ndmpd.dma``) from tests the way a user does: one environment
(password, XDG dirs in the test's home), its ``--json`` lines, its catalog listing, and a run
stopped mid-job by a signal (or by something else happening) once a condition holds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from .conftest import PASSWORD, REPO


def ndmp_env(home: Path, password: str = PASSWORD) -> dict[str, str]:
    """The environment of an ``ndmp`` run: config and data under ``home``; a fixed width, so
    tables and bars do not depend on the terminal running the tests."""
    return {**os.environ, "NDMP_PASSWORD": password, "XDG_CONFIG_HOME": str(home), "XDG_DATA_HOME": str(home),
            "COLUMNS": "100"}


def ndmp(*args: str, home: Path, password: str = PASSWORD, timeout: float = 300) -> subprocess.CompletedProcess:
    """``ndmp ARGS`` to completion; text stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "ndmpd.dma", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ndmp_env(home, password))


def json_lines(stdout: str) -> list[dict]:
    """Every line of ``--json`` output (each is one JSON object)."""
    return [json.loads(line) for line in stdout.splitlines()]


def summary(stdout: str) -> dict:
    """The summary line of ``--json`` output: the last line, of type summary."""
    lines = json_lines(stdout)
    assert lines and lines[-1]["type"] == "summary", stdout
    return lines[-1]


def ok_json(result: subprocess.CompletedProcess):
    """The last ``--json`` line of a run that succeeded (a job's summary, or a listing)."""
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout.splitlines()[-1])


def backups(home: Path, catalog: Path) -> list[dict]:
    """``ndmp backups --json`` on ``catalog``."""
    result = ndmp("backups", "--catalog", str(catalog), "--json", home=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def progress_then_summary(stdout: str) -> tuple[list[dict], dict]:
    """A job's ``--json`` lines: only known types, progress lines whose bytes grow (two at
    least), and exactly one summary, last. Returns (progress lines, summary)."""
    lines = json_lines(stdout)
    assert {line["type"] for line in lines} <= {"progress", "log", "warning", "summary"}
    assert [line["type"] for line in lines].count("summary") == 1 and lines[-1]["type"] == "summary"
    progress = [line for line in lines if line["type"] == "progress"]
    assert len(progress) >= 2, stdout
    done = [p["bytes"] for p in progress]
    assert done == sorted(done) and done[-1] > 0
    return progress, lines[-1]


class Stopped(NamedTuple):
    """What an ``ndmp`` run stopped mid-job ended with (stdout whole, as it wrote it)."""
    returncode: int
    stdout: str
    stderr: str


def running_backup_in(catalog: Path) -> Callable[[], bool]:
    """A condition: the catalog holds a backup still ``running`` (the job has begun)."""
    from ndmpd.dma.catalog import open_catalog

    def holds() -> bool:
        if not catalog.exists():
            return False
        with open_catalog(catalog) as cat:
            return any(b.status == "running" for b in cat.backups())
    return holds


def file_grows(path: Path) -> Callable[[], bool]:
    """A condition: ``path`` exists and is not empty (a restore is writing it)."""
    return lambda: path.exists() and path.stat().st_size > 0


def stop_mid_job(args: list[str], home: Path, *, until: Callable[[], bool] | None = None,
                 line: Callable[[dict], bool] | None = None,
                 stop: int | Callable[[], None] = signal.SIGINT, settle: float = 0.0,
                 wait: float = 30, timeout: float = 90) -> Stopped:
    """Start ``ndmp ARGS``; once ``until()`` holds or a ``--json`` line satisfies ``line`` (within
    ``wait`` seconds, else the test fails), wait ``settle`` seconds, then send the signal ``stop``
    (or call it); wait up to ``timeout`` for the exit. The process is killed whatever happens."""
    lines: list[str] = []
    seen = threading.Event()
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "ndmpd.dma", *args], cwd=REPO, env=ndmp_env(home),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True)

        def read() -> None:                     # stdout must keep draining, matched or not
            for raw in proc.stdout:
                lines.append(raw)
                if line is not None and not seen.is_set():
                    try:
                        parsed = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(parsed, dict) and line(parsed):
                        seen.set()
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + wait
            held = False
            while time.monotonic() < deadline and proc.poll() is None:
                if seen.is_set() or (until is not None and until()):
                    held = True
                    break
                time.sleep(0.01)
            if not held:
                errors.seek(0)
                raise AssertionError(f"the condition never held (exit {proc.poll()}): {errors.read()}"
                                     f"{''.join(lines)}")
            time.sleep(settle)
            if callable(stop):
                stop()
            else:
                proc.send_signal(stop)
            returncode = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
        errors.seek(0)
        return Stopped(returncode, "".join(lines), errors.read())


def assert_interrupted(stopped: Stopped, states: dict[str, str]) -> dict:
    """Exit 130, one stderr line saying interrupted, a summary saying interrupted and the job's
    own sessions (``states``, e.g. {"data": "idle", "mover": "idle"}) as given. Returns the summary."""
    assert stopped.returncode == 130, stopped.stderr
    assert len(stopped.stderr.strip().splitlines()) == 1 and "interrupted" in stopped.stderr, stopped.stderr
    ended = summary(stopped.stdout)
    assert ended["status"] == "interrupted"
    assert ended["states"] == states, "read on the job's own sessions"
    return ended


async def sigint_once_bytes_flow(task: asyncio.Task, agent, interrupted: type[BaseException]) -> None:
    """For a job run in this process: once DATA on ``agent`` has processed bytes (15 s at most),
    SIGINT this process as a user's ^C would, and expect ``task`` to end raising ``interrupted``."""
    for _ in range(300):
        await asyncio.sleep(0.05)
        if (await agent.call("DATA_GET_STATE")).bytes_processed > 0:
            break
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(interrupted):
        await task
