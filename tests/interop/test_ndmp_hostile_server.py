"""``ndmp backup`` against a server whose messages cannot be trusted (tests/dma_fuzz.py's proxy
rewriting a real ndmpd's records): a halt notice that never comes, a reply cut short mid-job, a
file history post garbled, random rewriting, and a direct-access restore's read requests lost. Every job ends in bounded time with a true
status in the catalog (never left "running"), one line saying why when it failed, and the drive
given back."""

from __future__ import annotations

import json
import time

import pytest

from ndmpd.wire import C
from tests.dma_fuzz import RewritingProxy, dropping, message_code, random_rewrite
from tests.engine_helpers import build_every_case

from .conftest import OUT_VOLUME, drive_is_free
from .ndmp_cli import backups, ndmp, summary

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
        given_back(server, done)
        return done, [row["status"] for row in backups(tmp_path, catalog)] if catalog.exists() else [], took
    yield server, rewritten
    for proxy in proxies:
        proxy.close()


def given_back(server, done) -> None:
    """The job is over: its drive is free again within seconds, and it printed no traceback."""
    deadline = time.monotonic() + 10
    while not drive_is_free(server.host, "vtape0") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert drive_is_free(server.host, "vtape0"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def only(code: int, change):
    return lambda record: change(record) if message_code(record) == code else record


def test_a_halt_notice_that_never_comes_is_read_from_the_state(target):
    _, rewritten = target      # NOTIFY_DATA_HALTED turned into a message nobody knows: dropped
    done, rows, took = rewritten(dropping(C.NOTIFY_DATA_HALTED), "lost-notice")
    assert done.returncode == 0 and rows == ["done"], (done.stderr, done.stdout[-2000:])
    assert took < 40, took
    said = done.stderr.strip().splitlines()          # the post it could not read, in ndmp's words
    assert said and all(line.startswith("ndmp: warning: ") for line in said), done.stderr
    assert any("0x7fff" in line and "dropped" in line for line in said), done.stderr


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



WANTED = {"a.txt": b"first\n" * 100, "z.txt": b"last\n" * 7}


@pytest.fixture
def restorable(server_factory, tmp_path):
    """(restored(rewrite, name) -> (CompletedProcess, seconds), read(name) -> the files restored):
    a backup of two small files around a 16 MiB one, restored by direct access through a proxy."""
    vol, out = tmp_path / "vol", tmp_path / "out"
    vol.mkdir()
    out.mkdir()
    (vol / "a.txt").write_bytes(WANTED["a.txt"])
    with open(vol / "m-big.bin", "wb") as big:           # so direct access has something to skip
        for n in range(16):
            big.write(bytes([n]) * (1 << 20))
    (vol / "z.txt").write_bytes(WANTED["z.txt"])
    server = server_factory(extra=OUT_VOLUME.format(path=out, state=tmp_path / "state"))
    catalog, spec = tmp_path / "catalog.db", f"ndmp@{server.host}"
    made = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--catalog", str(catalog),
                "--json", home=tmp_path, timeout=JOB_LIMIT)
    assert made.returncode == 0, made.stderr
    backup_id = summary(made.stdout)["id"]

    def restored(rewrite, name: str):
        proxy = RewritingProxy((server.host, 10000), rewrite)
        try:
            began = time.monotonic()
            done = ndmp("--timeout", "5", "restore", backup_id, "/a.txt", "/z.txt", "--to",
                        f"ndmp@127.0.0.1:{proxy.port}:/export/out/{name}", "--catalog", str(catalog), "--json",
                        home=tmp_path, timeout=JOB_LIMIT)
            took = time.monotonic() - began
        finally:
            proxy.close()
        given_back(server, done)
        return done, took

    def read(name: str) -> dict[str, bytes]:
        return {f: (out / name / f).read_bytes() for f in WANTED if (out / name / f).exists()}
    return restored, read


def test_a_dar_restore_whose_read_requests_never_come_reads_them_from_the_state(restorable):
    """Every NOTIFY_DATA_READ dropped: the DMA reads the data server's last read asked for from
    DATA_GET_STATE (twice running) and answers it, so the restore ends done, not by its stall
    timeout (300 s) nor by reading the same range twice."""
    restored, read = restorable
    dropped: list[bytes] = []
    done, took = restored(dropping(C.NOTIFY_DATA_READ, dropped), "d")
    assert done.returncode == 0, (done.stderr, done.stdout[-2000:])
    result = summary(done.stdout)
    assert result["status"] == "done" and result["direct"], result
    assert dropped, "the restore asked for no direct-access read"
    assert result["bytes_moved"] < 8 << 20, result                 # the big file was skipped
    assert read("d") == WANTED
    assert took < 15 * len(dropped) + 15, (took, len(dropped))


@pytest.mark.parametrize("notice", ["NOTIFY_DATA_HALTED", "NOTIFY_MOVER_HALTED"])
def test_a_restore_whose_halt_notice_never_comes_ends_done_from_the_state(restorable, notice):
    """The progress samples a restore takes every second are not events: a halt post dropped
    is read from the states after the quiet, as in a backup."""
    restored, read = restorable
    done, took = restored(dropping(getattr(C, notice)), "h")
    assert done.returncode == 0 and summary(done.stdout)["status"] == "done", (done.stderr, done.stdout[-2000:])
    assert read("h") == WANTED
    assert took < 40, took


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_randomly_rewritten_messages_end_every_restore_with_a_true_status(restorable, rate):
    restored, read = restorable
    for seed in range(5):
        name = f"r{int(rate * 100)}-{seed}"
        done, _ = restored(random_rewrite(seed, rate), name)
        assert done.returncode in (0, 1, 3), (seed, done.returncode, done.stderr)
        if done.returncode == 0:
            assert summary(done.stdout)["status"] == "done" and read(name) == WANTED, (seed, done.stdout[-2000:])
        else:
            assert done.stderr.strip().splitlines()[-1].startswith("ndmp: "), (seed, done.stderr)
