"""The DATA service driven by ndmjob as the DMA: conformance, two-way, three-way, DAR, incrementals, abort."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine_helpers import build_every_case
from tests.interop.conftest import NDMJOB, NDMJOB_WRAPPER, ndmjob_daemon, run
from tests.trees import describe, differences
from tests.waiting import wait_for

PROGRAM = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB


def ndmjob(*args: str, timeout: int = 120) -> str:
    done = run([PROGRAM, "-v", *args], timeout=timeout)
    return done.stdout + done.stderr


@pytest.fixture
def data_server(ndmjob, server_factory, tmp_path):
    """A server whose volume holds a tree of every kind of file plus a 6 MiB file."""
    server = server_factory()
    src = build_every_case(tmp_path / "vol" / "src")
    (src / "big.bin").write_bytes(os.urandom(6 << 20))
    return server, tmp_path / "vol"


@pytest.mark.parametrize("version", ["2", "3", "4"])
def test_ndmjob_test_data_passes(data_server, version):
    server, _ = data_server
    out = ndmjob("-o", "test-data", "-D", server.agent(version))
    assert "FINAL test-data Passed" in out and "fail=0" in out and "warn=0" in out, out


def mover_read_kb(out: str) -> int:
    return max(int(n) for n in re.findall(r"MOVER: read (\d+)KB", out))


def index_paths(index: Path) -> set[str]:
    return {line.split()[1] for line in index.read_text().splitlines() if line.startswith("DHf ")}


@pytest.mark.parametrize("version,butype", [("4", "tar"), ("4", "dump"), ("3", "tar"), ("3", "dump")])
def test_two_way_backup_list_restore_and_direct_access(data_server, tmp_path, version, butype):
    server, vol = data_server
    agent = server.agent(version)
    index = tmp_path / "backup.idx"
    out = ndmjob("-c", "-D", agent, "-f", "vtape0", "-B", butype, "-C", "/export/data", "-I", str(index))
    assert "Operation ended OKAY" in out, out
    env = dict(line[3:].split("=", 1) for line in index.read_text().splitlines() if line.startswith("DE "))
    assert env["TYPE"] == butype and env["FILESYSTEM"] == "/export/data" and env["LEVEL"] == "0"
    assert env["DUMP_DATE"].isdigit()
    if butype == "dump":
        assert re.search(r"^DHd \d+ big.bin UNIX \d+", index.read_text(), re.M)
        assert re.search(r"^DHn \d+ UNIX f", index.read_text(), re.M)
    else:
        assert {"/src/dir/file", "/src/big.bin", "/src/sparse", "/src/long_link"} <= index_paths(index)

    listing = ndmjob("-t", "-D", agent, "-f", "vtape0", "-B", butype, "-J", str(index))
    assert "Operation ended OKAY" in listing, listing
    names = ("src/dir/file", "src/big.bin", "src/deep") if butype == "tar" else (" big.bin ", " file ", " deep ")
    for name in names:
        assert name in listing, listing

    whole = ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", butype, "-C", str(vol / "restored"), "-J", str(index))
    assert "Operation ended OKAY" in whole, whole
    assert differences(describe(vol / "src"), describe(vol / "restored" / "src")) == []

    picked = vol / "picked"
    dar = ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", butype, "-C", str(picked), "-J", str(index),
                 "/src/dir/file", "/src/zero", "/src/renamed=/src/hole-at-end", "/src/top-hard")
    assert "Operation ended OKAY" in dar, dar
    assert dar.count('DLF "OK') == 4, dar
    restored = sorted(str(p.relative_to(picked)) for p in picked.rglob("*") if not p.is_dir())
    assert restored == ["src/dir/file", "src/renamed", "src/top-hard", "src/zero"]
    assert (picked / "src" / "renamed").read_bytes() == (vol / "src" / "hole-at-end").read_bytes()
    # a hard link whose first link (dir/file) comes earlier in the image: its contents, fetched back
    assert (picked / "src" / "top-hard").read_bytes() == (vol / "src" / "dir" / "file").read_bytes()
    image_kb = (vol.parent / "state" / "vtape0.img").stat().st_size // 1024
    assert mover_read_kb(dar) < image_kb / 4, (mover_read_kb(dar), image_kb)


def test_restore_outside_every_volume_is_refused_with_a_reason(data_server, tmp_path):
    server, vol = data_server
    index = tmp_path / "b.idx"
    assert "ended OKAY" in ndmjob("-c", "-D", server.agent("4"), "-f", "vtape0", "-B", "tar",
                                  "-C", "/export/data", "-I", str(index))
    out = ndmjob("-x", "-D", server.agent("4"), "-f", "vtape0", "-B", "tar", "-C", str(tmp_path / "elsewhere"),
                 "-J", str(index))
    assert "ended OKAY" not in out and not (tmp_path / "elsewhere").exists()
    assert "only write inside a configured volume" in out, out
    bad = ndmjob("-c", "-D", server.agent("4"), "-f", "vtape0", "-B", "tar", "-C", "/no/such/volume")
    assert "is not a configured volume" in bad and "/export/data" in bad, bad


def test_swap_connect_two_way_and_two_connections(data_server, tmp_path):
    server, vol = data_server
    agent = server.agent("4")
    for name, extra in (("local", []), ("tcp", ["-T", agent])):
        index = tmp_path / f"{name}.idx"
        out = ndmjob("-o", "swap-connect", "-c", "-D", agent, *extra, "-f", "vtape0", "-B", "tar",
                     "-C", "/export/data", "-I", str(index))
        assert "Operation ended OKAY" in out, out
        target = vol / f"swap-{name}"
        out = ndmjob("-o", "swap-connect", "-x", "-D", agent, *extra, "-f", "vtape0", "-B", "tar",
                     "-C", str(target), "-J", str(index))
        assert "Operation ended OKAY" in out, out
        assert differences(describe(vol / "src"), describe(target / "src")) == []


@pytest.fixture
def tape_daemon(tmp_path):
    """ndmjob's own daemon as another vendor's tape agent, on 127.0.0.1:<free port>."""
    tape = tmp_path / "tape3w"
    tape.touch()
    with ndmjob_daemon(tmp_path) as port:
        yield f"127.0.0.1:{port},ndmp,ndmp", tape


@pytest.mark.parametrize("version,butype", [("4", "tar"), ("4", "dump"), ("3", "tar"), ("3", "dump")])
def test_three_way_with_ndmjob_tape_agent(data_server, tape_daemon, tmp_path, version, butype):
    server, vol = data_server
    tape_agent, tape = tape_daemon
    agent = server.agent(version)
    assert "Operation complete" in ndmjob("-o", "init-labels", "-T", tape_agent, "-f", str(tape), "-m", "THREEWAY")
    index = tmp_path / "3w.idx"
    out = ndmjob("-c", "-D", agent, "-T", tape_agent, "-f", str(tape), "-m", "THREEWAY", "-B", butype,
                 "-C", "/export/data", "-I", str(index))
    assert "Operation ended OKAY" in out, out
    out = ndmjob("-x", "-D", agent, "-T", tape_agent, "-f", str(tape), "-B", butype, "-C", str(vol / "r3w"),
                 "-J", str(index))
    assert "Operation ended OKAY" in out, out
    assert differences(describe(vol / "src"), describe(vol / "r3w" / "src")) == []
    picked = vol / "p3w"
    out = ndmjob("-x", "-D", agent, "-T", tape_agent, "-f", str(tape), "-B", butype, "-C", str(picked),
                 "-J", str(index), "/src/big.bin", "/src/zero", "/src/renamed=/src/dir/file")
    assert "Operation ended OKAY" in out and out.count('DLF "OK') == 3, out
    assert sorted(str(p.relative_to(picked)) for p in picked.rglob("*") if not p.is_dir()) == \
        ["src/big.bin", "src/renamed", "src/zero"]
    assert (picked / "src" / "big.bin").read_bytes() == (vol / "src" / "big.bin").read_bytes()


def test_three_way_direct_access_of_small_entries(data_server, tape_daemon, tmp_path):
    server, vol = data_server
    tape_agent, tape = tape_daemon
    agent = server.agent("4")
    ndmjob("-o", "init-labels", "-T", tape_agent, "-f", str(tape), "-m", "THREEWAY")
    index = tmp_path / "3w.idx"
    assert "ended OKAY" in ndmjob("-c", "-D", agent, "-T", tape_agent, "-f", str(tape), "-m", "THREEWAY",
                                  "-B", "tar", "-C", "/export/data", "-I", str(index))
    try:
        out = ndmjob("-x", "-D", agent, "-T", tape_agent, "-f", str(tape), "-B", "tar", "-C", str(vol / "p"),
                     "-J", str(index), "/src/dir/file", "/src/zero", "/src/renamed=/src/hole-at-end", timeout=30)
    except subprocess.TimeoutExpired:
        out = ""
    assert "Operation ended OKAY" in out and out.count('DLF "OK') == 3, out
    assert mover_read_kb(out) < tape.stat().st_size // 1024 / 4, out        # direct access: a fraction


def test_incremental_level_1_holds_the_changes_and_replays_deletions(data_server, tmp_path):
    server, vol = data_server
    agent = server.agent("4")
    src, target = vol / "src", vol / "restored"
    zero = tmp_path / "l0.idx"
    out = ndmjob("-c", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", "/export/data", "-I", str(zero),
                 "-E", "LEVEL=0", "-E", "UPDATE=y")
    assert "ended OKAY" in out, out
    assert "ended OKAY" in ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", str(target), "-J", str(zero))
    time.sleep(1.1)
    (src / "zero").unlink()
    (src / "big.bin").unlink()
    (src / "new.txt").write_bytes(b"added after level 0")
    one = tmp_path / "l1.idx"
    out = ndmjob("-c", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", "/export/data", "-I", str(one),
                 "-E", "LEVEL=1", "-E", "UPDATE=y")
    assert "ended OKAY" in out, out
    files = {p for p in index_paths(one) if not p.endswith("/")}
    assert "/src/new.txt" in files and "/src/dir/file" not in files and "/src/big.bin" not in files
    assert "DE LEVEL=1" in one.read_text()
    assert "ended OKAY" in ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", str(target), "-J", str(one))
    assert not (target / "src" / "zero").exists() and not (target / "src" / "big.bin").exists()
    assert differences(describe(src), describe(target / "src")) == []


def test_killed_dma_mid_backup_leaves_the_server_clean(data_server, tmp_path):
    server, vol = data_server
    with open(vol / "large.bin", "wb") as out:          # 2 GiB of real data: the dump takes a while
        block = os.urandom(1 << 20)
        for _ in range(2048):
            out.write(block)
    tasks = lambda: len(os.listdir(f"/proc/{server.proc.pid}/task"))   # noqa: E731
    idle_threads = tasks()
    dma = subprocess.Popen([str(PROGRAM), "-v", "-c", "-D", server.agent("4"), "-f", "vtape0", "-B", "tar",
                            "-C", "/export/data"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the dump has the 2 GiB file open: the backup is under way (a new thread alone may be the
        # TAPE_OPEN's; killed then, there is no backup to abort)
        assert wait_for(lambda: opened(server.proc.pid, vol / "large.bin") or dma.poll() is not None, 120), \
            "the backup never started"
        assert dma.poll() is None, "the backup ended before it could be interrupted"
    finally:
        dma.kill()
        dma.wait()
    assert wait_for(lambda: tasks() <= idle_threads, 60), "threads left behind"
    assert not opened(server.proc.pid, vol / "large.bin"), "the dump still reads"
    assert not (vol / ".ndmpd-snapshots").exists() or not any((vol / ".ndmpd-snapshots").iterdir())
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    assert children == []
    assert "Data Agent" in ndmjob("-q", "-D", server.agent("4")), "the server stopped serving"
    assert wait_for(lambda: "data halted (reason 2)" in server.log.read_text(), 30), \
        "no abort was logged: " + server.log.read_text()[-3000:]


def opened(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds a file named like ``path`` open (by name: a snapshot shows
    the volume's files under another root)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).endswith("/" + path.name):
                return True
        except OSError:                 # closed meanwhile
            pass
    return False


def test_files_backs_up_only_the_listed_paths(data_server, tmp_path):
    """ndmjob's file arguments become FILES: the image holds those paths (a directory whole)."""
    server, vol = data_server
    agent = server.agent("4")
    index = tmp_path / "files.idx"
    out = ndmjob("-c", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", "/export/data", "-I", str(index),
                 "/src/dir", "/src/zero", "/src/no-such-file")
    assert "Operation ended OKAY" in out, out
    assert "/src/no-such-file" in out and "skipped" in out, out
    assert "DE UPDATE=n" in index.read_text()                 # a partial dump records no dump date
    files = {p for p in index_paths(index) if not p.endswith("/")}
    assert {"/src/dir/file", "/src/dir/sub/hard", "/src/zero"} <= files
    assert not files & {"/src/big.bin", "/src/sparse", "/src/top-hard"}, files
    target = vol / "some"
    assert "Operation ended OKAY" in ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", str(target),
                                            "-J", str(index))
    restored = sorted(str(p.relative_to(target)) for p in target.rglob("*") if not p.is_dir())
    assert restored == ["src/dir/file", "src/dir/sub/hard", "src/zero"]


@pytest.mark.parametrize("version,butype", [("4", "tar"), ("3", "dump")])
def test_tshark_decodes_data_sessions_without_malformed_packets(data_server, tshark_capture, tmp_path,
                                                              version, butype):
    """Backup with file history, then a direct-access restore: every DATA, FH, LOG and NOTIFY
    message on the control connection dissects cleanly."""
    server, vol = data_server
    agent = server.agent(version)
    stop = tshark_capture(server.host)
    index = tmp_path / "backup.idx"
    assert "ended OKAY" in ndmjob("-c", "-D", agent, "-f", "vtape0", "-B", butype, "-C", "/export/data",
                                  "-I", str(index))
    assert "ended OKAY" in ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", butype, "-C", str(vol / "p"),
                                  "-J", str(index), "/src/dir/file", "/src/zero")
    pcap = stop()
    summary = subprocess.run(["tshark", "-r", str(pcap), "-Y", "ndmp"], capture_output=True, text=True).stdout
    history = ("FH_ADD_FILE",) if butype == "tar" else ("FH_ADD_DIR", "FH_ADD_NODE")
    for message in ("DATA_START_BACKUP", "DATA_START_RECOVER", "DATA_GET_STATE", "DATA_GET_ENV",
                    "NOTIFY_DATA_HALTED", "NOTIFY_DATA_READ", "LOG_FILE", *history):
        assert message in summary, (message, summary[-3000:])
    malformed = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "_ws.malformed && !(ndmp.msg_type == 1 && tcp.len == 28)"],
        capture_output=True, text=True).stdout
    assert malformed.strip() == "", malformed
