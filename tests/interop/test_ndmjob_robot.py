"""The virtual tape library driven by ndmjob's robot operations (dma-interop.md §2.9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.conftest import NDMJOB, NDMJOB_WRAPPER, run
from tests.trees import describe, differences

PROGRAM = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB
LIBRARY = """
[[tape]]
name = "ltape0"
capacity = "20MiB"
early_warning = "1MiB"

[[changer]]
name = "vlib0"
path = "{path}"
drives = ["ltape0"]
slots = 6
import_export = 2
"""


def ndmjob(*args: str, timeout: int = 120, env: dict | None = None) -> str:
    done = subprocess.run([str(PROGRAM), "-v", *args], capture_output=True, text=True, timeout=timeout, env=env)
    return done.stdout + done.stderr


def library(config: Path, *args: str) -> str:
    done = run([sys.executable, "-m", "ndmpd", "library", "--config", str(config), *args])
    assert done.returncode == 0, done.stderr
    return done.stdout


def element(listing: str, address: int) -> str:
    """What ``ndmpd library list`` says element ``address`` holds."""
    for line in listing.splitlines():
        if line.split() and line.split()[0] == str(address):
            return line.split()[-1] if "from" not in line else line.split()[-3]
    raise AssertionError(f"no element {address} in {listing}")


@pytest.fixture
def robot(ndmjob, server_factory, tmp_path):
    """A server with library vlib0 (drive ltape0 at 128, slots 1024-1029, ports 0-1) holding
    cartridges TAPE01-03 in slots 1024-1026 and TAPE09 in port 0."""
    server = server_factory(extra=LIBRARY.format(path=tmp_path / "lib"))
    config = server.config
    library(config, "create", "vlib0", "TAPE01", "TAPE02", "TAPE03")
    library(config, "create", "vlib0", "TAPE09", "--outside")
    library(config, "import", "vlib0", "TAPE09")
    agent = server.agent("4")
    return server, agent, ("-R", agent, "-r", "vlib0"), ("-T", agent, "-f", "ltape0")


def test_query_shows_the_changer_and_its_elements(robot):
    server, agent, changer, _ = robot
    out = ndmjob("-q", *changer)
    assert "'NDMPD   VIRTUAL LIBRARY 0100'" in out, out
    assert "slots 6@1024  drive 1@128  arm 1@16  i/e 2@0" in out, out
    assert "@1024 SLOT Full  PVolTag(TAPE01,#0)" in out and "@1027 SLOT Empty" in out, out
    assert "@0   IEE  Full  PVolTag(TAPE09,#0)" in out and "by-oper" in out, out
    assert "@128 TAPE Empty" in out, out


def test_robot_operations_move_cartridges_and_the_state_persists(robot):
    server, agent, changer, tape = robot
    config = server.config
    assert "Operation complete" in ndmjob("-o", "init-elem-status", *changer)
    out = ndmjob("-o", "load=1024", *changer, *tape)
    assert "Commanding robot to load slot @1024 into drive @128" in out and "Operation complete" in out, out
    assert element(library(config, "list", "vlib0"), 128) == "TAPE01"
    assert "unload drive @128 to slot @1024" in ndmjob("-o", "unload", *changer, *tape)
    assert "Operation complete" in ndmjob("-o", "move", "-o", "from-addr=1026", "-o", "to-addr=1", *changer)
    assert "Operation complete" in ndmjob("-o", "import=1027", *changer)         # port 0 -> slot 1027
    out = ndmjob("-o", "export=1025", *changer)                                 # slot 1025 -> free port 0
    assert "Operation complete" in out and "problems" not in out, out
    listing = library(config, "list", "vlib0")
    assert [element(listing, a) for a in (0, 1, 128, 1024, 1026, 1027)] == \
        ["TAPE02", "TAPE03", "-", "TAPE01", "-", "TAPE09"], listing
    # the operator takes TAPE02 out; a restart keeps everything where it was
    library(config, "export", "vlib0", "TAPE02")
    server.stop()
    restarted = type(server)(server.host, config, server.log, server.password)
    try:
        out = ndmjob("-q", "-R", restarted.agent("3"), "-r", "vlib0")
        assert "@0   IEE  Empty" in out and "@1   IEE  Full  PVolTag(TAPE03,#0)" in out, out
        assert "@1027 SLOT Full  PVolTag(TAPE09,#0)" in out, out
        assert "outside: TAPE02" in library(config, "list", "vlib0")
    finally:
        restarted.stop()


def test_labels_on_two_slots_are_listed_and_reset_puts_the_robot_right(robot):
    server, agent, changer, tape = robot
    out = ndmjob("-o", "init-labels", *changer, *tape, "-m", "ROBOT01@1024", "-m", "ROBOT02@1025")
    assert "Writing tape label 'ROBOT02'" in out and "Operation complete" in out, out
    out = ndmjob("-l", *changer, *tape, "-m", "@1024", "-m", "@1025")
    assert 'ME "ROBOT01@1024"' in out and 'ME "ROBOT02@1025"' in out, out
    assert "load slot @1024" in ndmjob("-o", "load=1024", *changer, *tape)
    assert "had problems" in ndmjob("-o", "load=1025", *changer, *tape)          # the drive is full
    assert element(library(server.config, "list", "vlib0"), 128) == "TAPE01"     # and nothing moved
    out = ndmjob("-Z", *changer)
    assert "Operation complete" in out and "@128 TAPE Empty" in ndmjob("-q", *changer), out


@pytest.mark.parametrize("series", ["test-tape", "test-mover"])
def test_conformance_with_the_drive_loaded_by_the_robot(robot, ndmjob_suite, series):
    server, agent, changer, _ = robot
    done = ndmjob_suite(series, agent, "4", "-f", "ltape0", *changer, "-m", "@1024")
    out = done.stdout + done.stderr
    assert "Commanding robot to load slot @1024 into drive @128" in out, out[-3000:]
    assert f"FINAL {series} Passed" in out and "fail=0" in out.split(f"FINAL {series}")[1], out[-3000:]
    assert "unload drive @128 to slot @1024" in out, out[-2000:]


def test_backup_spans_two_cartridges_and_restores_identically(robot, tmp_path):
    server, agent, changer, tape = robot
    src = tmp_path / "vol" / "src"
    src.mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(15 << 20))
    (src / "b.bin").write_bytes(os.urandom(12 << 20))
    (src / "small").write_text("hello\n")
    media = ("-m", "ROBOT01@1024", "-m", "ROBOT02@1025")
    assert "Operation complete" in ndmjob("-o", "init-labels", *changer, *tape, *media)
    index = tmp_path / "span.idx"
    out = ndmjob("-c", "-D", agent, *tape, *changer, *media, "-B", "tar", "-C", "/export/data", "-I", str(index))
    assert "Operation requires next tape" in out and "load slot @1025 into drive @128" in out, out[-3000:]
    assert "Operation ended OKAY" in out, out[-3000:]
    assert "media #2 ROBOT02+1/" in out, out[-2000:]
    out = ndmjob("-x", "-D", agent, *tape, *changer, *media, "-B", "tar", "-C", str(tmp_path / "vol" / "back"),
                 "-J", str(index))
    assert "Operation ended OKAY" in out, out[-3000:]
    assert differences(describe(src), describe(tmp_path / "vol" / "back" / "src")) == []


def test_tshark_decodes_the_changer_exchanges(robot, tshark_capture):
    server, agent, changer, tape = robot
    stop = tshark_capture(server.host)
    ndmjob("-q", *changer)
    ndmjob("-o", "load=1024", *changer, *tape)
    ndmjob("-o", "unload", *changer, *tape)
    pcap = stop()
    summary = subprocess.run(["tshark", "-r", str(pcap), "-Y", "ndmp"], capture_output=True, text=True).stdout
    for message in ("SCSI_OPEN", "CONFIG_GET_SCSI_INFO", "SCSI: Inquiry", "SCSI: Mode Sense(6)",
                    "SCSI: Read Element Status", "SCSI: Move Medium", "(Inquiry) (Good)", "(Mode Sense(6)) (Good)",
                    "(Read Element Status) (Good)", "(Move Medium) (Good)"):
        assert message in summary, (message, summary[-3000:])
    malformed = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "_ws.malformed && !(ndmp.msg_type == 1 && tcp.len == 28)"],
        capture_output=True, text=True).stdout
    assert malformed.strip() == "", malformed

