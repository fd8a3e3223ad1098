"""``ndmp backup`` against a server whose messages cannot be trusted (tests/dma_fuzz.py's proxy
rewriting a real ndmpd's records): a halt notice that never comes, a reply cut short mid-job, a
file history post garbled, and random rewriting. Every job ends in bounded time with a true
status in the catalog (never left "running"), one line saying why when it failed, and the drive
given back."""

from __future__ import annotations

import json
import struct
import time

import pytest

from ndmpd.wire import C
from tests.dma_fuzz import RewritingProxy, message_code, random_rewrite
from tests.engine_helpers import build_every_case

from .conftest import drive_is_free
from .ndmp_cli import backups, ndmp

pytestmark = pytest.mark.interop
JOB_LIMIT = 90                  # seconds any one job may take here (a hang fails the test)


@pytest.fixture
def target(server_factory, tmp_path):
    """(server, rewritten(rewrite) -> the run's (CompletedProcess, catalog rows, seconds))."""
    src = build_every_case(tmp_path / "vol" / "src")
    for n in range(300):
        (src / f"f{n:03d}").write_bytes(bytes([n % 251]) * (n * 37))
    server = server_factory()
    proxies: list[RewritingProxy] = []

    def rewritten(rewrite, name: str):
        proxy = RewritingProxy((server.host, 10000), rewrite)
        proxies.append(proxy)
        spec = f"ndmp@127.0.0.1:{proxy.port}"
        catalog = tmp_path / f"{name}.db"
        began = time.monotonic()
        done = ndmp("--timeout", "5", "backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0",
                    "--catalog", str(catalog), "--json", home=tmp_path, timeout=JOB_LIMIT)
        took = time.monotonic() - began
        proxy.close()
        deadline = time.monotonic() + 10
        while not drive_is_free(server.host, "vtape0") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert drive_is_free(server.host, "vtape0"), done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        return done, [row["status"] for row in backups(tmp_path, catalog)] if catalog.exists() else [], took
    yield server, rewritten
    for proxy in proxies:
        proxy.close()


def only(code: int, change):
    return lambda record: change(record) if message_code(record) == code else record


def test_a_halt_notice_that_never_comes_is_read_from_the_state(target):
    _, rewritten = target      # NOTIFY_DATA_HALTED turned into a message nobody knows: dropped
    done, rows, took = rewritten(only(C.NOTIFY_DATA_HALTED, lambda r: r[:12] + struct.pack(">I", 0x7FFF) + r[16:]),
                                 "lost-notice")
    assert done.returncode == 0 and rows == ["done"], (done.stderr, done.stdout[-2000:])
    assert took < 40, took


def test_a_reply_cut_short_mid_job_fails_it_in_one_line_and_marks_it_failed(target):
    _, rewritten = target
    done, rows, _ = rewritten(only(C.DATA_GET_STATE, lambda r: r[:29]), "cut-reply")
    assert done.returncode == 1 and rows == ["failed"], (done.stderr, rows)
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("ndmp: backup ") and "DATA_GET_STATE reply could not be decoded" in line, done.stderr


def test_a_garbled_file_history_post_is_left_out_with_a_warning(target, tmp_path):
    _, rewritten = target
    garbled = []

    def once(record):
        if not garbled and message_code(record) == C.FH_ADD_FILE:
            garbled.append(record)
            return record[:40]
        return record
    done, rows, _ = rewritten(once, "garbled-history")
    assert garbled and done.returncode == 3 and rows == ["done"], (done.stderr, rows)
    warnings = [json.loads(line)["text"] for line in done.stdout.splitlines() if '"warning"' in line]
    assert any("could not be read and are not in the catalog" in w for w in warnings), done.stdout[-2000:]


@pytest.mark.parametrize("rate", [0.03, 0.1])
def test_randomly_rewritten_messages_end_every_job_with_a_true_status(target, rate):
    _, rewritten = target
    for seed in range(8):
        done, rows, took = rewritten(random_rewrite(seed, rate), f"random-{rate}-{seed}")
        assert done.returncode in (0, 1, 3), (seed, done.returncode, done.stderr)
        assert rows in ([], ["done"], ["failed"]), (seed, rows)
        assert (done.returncode in (0, 3)) == (rows == ["done"]), (seed, done.returncode, rows, done.stderr)
        if done.returncode == 1:
            assert done.stderr.strip().splitlines()[-1].startswith("ndmp: "), (seed, done.stderr)
