"""A mover halted by a media error tells the DMA why: ndmjob, backing up to a drive whose
cartridge file sits on a tiny tmpfs that fills up mid-backup, prints the server's
LOG_MESSAGE naming the device's own reason (no space left) before the halt, on v4 and v3
(where the halt itself is only INTERNAL_ERROR), and LOG_LOG on v2."""

from __future__ import annotations

import os

import pytest

from tests.interop.test_ndmjob_encrypted import run_ndmjob
from tests.loopfs import tmpfs_mount

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("version", ["4", "3", "2"])
def test_a_full_disk_under_a_local_cartridge_reaches_ndmjob_as_a_log_message(server_factory, tmp_path, version):
    with tmpfs_mount(tmp_path, "small", size=8 << 20) as small:
        drive = f'\n[[tape]]\nname = "small"\npath = "{small / "small.img"}"\ncapacity = "1GiB"\n'
        server = server_factory(extra=drive)
        (tmp_path / "vol" / "big.bin").write_bytes(os.urandom(24 << 20))
        out = run_ndmjob("-c", "-D", server.agent(version), "-f", "small", "-B", "tar", "-C", "/export/data",
                         "-I", str(tmp_path / "backup.idx"))
        assert "Operation ended OKAY" not in out, out[-3000:]
        said = [line for line in out.splitlines() if "mover halted: tape write failed" in line]
        assert said, out[-3000:]
        assert "No space left on device" in said[0], said
        assert "small.img" in said[0], said
        log = (tmp_path / "ndmpd.log").read_text()
        assert "No space left on device" in log
