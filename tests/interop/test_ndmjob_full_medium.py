"""ndmjob backing up more than its one small cartridge holds reports failure: the data side
says the image is incomplete because the medium is full, and never that the backup completed."""

from __future__ import annotations

import os

import pytest

from tests.interop.conftest import NDMJOB, NDMJOB_WRAPPER, run

PROGRAM = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB
SMALL_TAPE = '\n[[tape]]\nname = "small"\npath = "{path}"\ncapacity = "1MiB"\nearly_warning = "64KiB"\n'


@pytest.mark.parametrize("version", ["3", "4"])
@pytest.mark.parametrize("size", [1200 << 10, 3 << 20])
def test_ndmjob_sees_a_full_small_cartridge_as_a_failed_backup(ndmjob, server_factory, tmp_path, version, size):
    (tmp_path / "vol").mkdir(exist_ok=True)
    (tmp_path / "vol" / "data.bin").write_bytes(os.urandom(size))
    server = server_factory(extra=SMALL_TAPE.format(path=tmp_path / "small.img"))
    done = run([PROGRAM, "-v", "-c", "-D", server.agent(version), "-f", "small", "-B", "tar", "-C", "/export/data",
                "-I", str(tmp_path / "b.idx")], timeout=120)
    out = done.stdout + done.stderr
    assert "Operation ended OKAY" not in out, out
    assert "incomplete: the medium is full" in out, out
    assert " complete:" not in out, out
    assert "Traceback" not in server.log.read_text()
