"""``ndmpd dump`` / ``ndmpd restore`` as an admin runs them: pipes, history file, offsets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.engine_helpers import build_every_case
from tests.trees import describe, differences

NDMPD = [sys.executable, "-m", "ndmpd"]


def _config(tmp_path: Path, src: Path) -> Path:
    conf = tmp_path / "ndmpd.toml"
    conf.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\nauth = ["none"]\n\n'
                    f'[[volume]]\nname = "data"\npath = "{src}"\nsnapshot = "none"\n')
    return conf


def test_dump_pipe_to_restore_with_history_and_a_direct_access_restore(tmp_path):
    src = build_every_case(tmp_path / "src")
    conf = _config(tmp_path, src)
    history = tmp_path / "history.txt"
    stream = tmp_path / "data.tar"
    with open(stream, "wb") as out:
        dumped = subprocess.run(NDMPD + ["dump", "data", "--config", str(conf), "--history", str(history),
                                         "--update"], stdout=out, stderr=subprocess.PIPE, text=True, timeout=120)
    assert dumped.returncode == 0, dumped.stderr
    assert "DUMP_DATE=" in dumped.stderr and "\r" not in dumped.stderr     # no progress when not a terminal
    with open(stream, "rb") as source:
        restored = subprocess.run(NDMPD + ["restore", str(tmp_path / "out")], stdin=source,
                                  capture_output=True, text=True, timeout=120)
    assert restored.returncode == 0, restored.stderr
    assert differences(describe(src), describe(tmp_path / "out")) == []

    lines = {line.rsplit("\t", 1)[1]: line.split("\t") for line in history.read_text().splitlines()}
    assert lines["caf\\351-latin1"][3] == "100644"
    offset = int(lines["dir/file"][0])
    with open(stream, "rb") as source:
        one = subprocess.run(NDMPD + ["restore", str(tmp_path / "one"), "--offset", str(offset),
                                      "--select", "dir/file=restored-file"], stdin=source,
                             capture_output=True, text=True, timeout=60)
    assert one.returncode == 0, one.stderr
    assert os.listdir(tmp_path / "one") == ["restored-file"]
    assert (tmp_path / "one" / "restored-file").read_bytes() == (src / "dir" / "file").read_bytes()


def test_level_one_through_the_command_line_and_errors(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    conf = _config(tmp_path, src)
    subprocess.run(NDMPD + ["dump", "data", "--config", str(conf), "--update"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=60)
    (src / "b").write_text("b")
    level1 = subprocess.run(NDMPD + ["dump", "data", "--config", str(conf), "--level", "1"],
                            capture_output=True, timeout=60)
    assert level1.returncode == 0
    listing = subprocess.run(["tar", "-tf", "-"], input=level1.stdout, capture_output=True, check=True).stdout
    assert listing.split() == [b"./", b"./b"]
    missing = subprocess.run(NDMPD + ["dump", "nosuch", "--config", str(conf)], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode != 0 and "volumes: data" in missing.stderr
    absent = subprocess.run(NDMPD + ["restore", str(tmp_path / "x"), "--select", "nothing"],
                            input=level1.stdout, capture_output=True, timeout=60)
    assert absent.returncode == 1 and b"nothing: not found in the stream" in absent.stderr


def test_a_dump_starts_without_the_restore_tape_library_and_replica_code():
    """Start-up is most of a small incremental's time: ``ndmpd dump`` imports what a dump uses."""
    probe = ("import sys; from ndmpd import cli; cli._parser('dump').parse_args(['dump', '.']);"
             "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split())
    for heavy in ("ndmpd.engine.restore", "ndmpd.engine.reader", "ndmpd.engine.journal", "ndmpd.tape_cli",
                  "ndmpd.library_cli", "ndmpd.replica_cli", "ndmpd.snapshots.holds", "construct"):
        assert heavy not in loaded


def test_a_live_level_1_from_a_file_without_drives_loads_only_what_it_uses(tmp_path):
    """Neither the keystore (no drive uses keys), the btrfs and LVM snapshotters (the volume is
    dumped live), logging (the job's warnings go to stderr through its callback) nor shutil with
    bz2 and lzma (argparse asks it the terminal's width) is this level 1's business; and the
    help is as wide as before."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    conf = _config(tmp_path, src)
    subprocess.run(NDMPD + ["dump", "data", "--config", str(conf), "--update"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=60)
    probe = (f"import sys; from ndmpd import cli; cli.main(['dump', 'data', '--config', {str(conf)!r}, "
             "'--level', '1']); print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    loaded = set(run.stderr.splitlines()[-1].split())
    assert "ndmpd.engine.dump" in loaded
    for unused in ("ndmpd.keystore", "ndmpd.snapshots.btrfs", "ndmpd.snapshots.lvm", "ndmpd.snapshots.mounts",
                   "logging", "shutil", "bz2", "lzma"):
        assert unused not in loaded
    helps = {columns: subprocess.run(NDMPD + ["dump", "--help"], capture_output=True, text=True, check=True,
                                     timeout=60, env=dict(os.environ, COLUMNS=str(columns))).stdout
             for columns in (60, 120)}
    assert max(map(len, helps[60].splitlines())) < max(map(len, helps[120].splitlines())) <= 118


def test_a_volume_that_cannot_be_snapshotted_is_said_so_on_stderr(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    dumped = subprocess.run(NDMPD + ["dump", str(src), "--snapshot", "auto"], capture_output=True, text=True,
                            timeout=60)
    assert dumped.returncode == 0, dumped.stderr
    assert f"ndmpd dump: volume {src} ({src}) cannot be snapshotted" in dumped.stderr


def test_the_restore_policies_offered_are_the_engines():
    from ndmpd import dump_cli
    from ndmpd.engine.restore import POLICIES
    assert dump_cli.RESTORE_POLICIES == POLICIES
