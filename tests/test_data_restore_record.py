"""Over NDMP, an incremental's deletions remove only what the chain restored there: a whole
level-1 recover into a directory holding the admin's files keeps them, and a subdirectory
recovered onto the volume (nlist ``/sub`` -> ``/vol``) keeps the volume's other contents."""

from __future__ import annotations

import os
import time

from ndmpd.engine.job import DumpRequest, dump_volume

from .test_data_hostile_restore import _name, _restore_image, server, volume  # noqa: F401 (fixtures)


def _chain(tmp_path) -> list[bytes]:
    src, state = tmp_path / "src", tmp_path / "src-state"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "kept").write_text("kept")
    (src / "sub" / "removed").write_text("removed later")
    (src / "top").write_text("top")
    images = []
    for level in (0, 1):
        if level:
            time.sleep(0.02)
            (src / "sub" / "removed").unlink()
            (src / "top").unlink()
            (src / "sub" / "new").write_text("new")
        stream = tmp_path / f"l{level}.tar"
        with open(stream, "wb") as out:
            dump_volume(DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", level=level,
                                    update=True), out.fileno())
        images.append(stream.read_bytes())
    return images


def test_a_whole_level_1_recover_keeps_the_admins_files(tmp_path, server, volume):
    out = volume / "restore"
    (out / "sub").mkdir(parents=True)
    (out / "precious").write_text("the admin's")
    (out / "sub" / "alien").write_text("the admin's too")
    level0, level1 = _chain(tmp_path)
    with server.client(4) as dma:
        _restore_image(dma, volume, level0)
    with server.client(4) as dma:
        _restore_image(dma, volume, level1)
    assert (out / "precious").read_text() == "the admin's"
    assert sorted(os.listdir(out / "sub")) == ["alien", "kept", "new"]
    assert not (out / "top").exists()


def test_an_nlist_subdirectory_onto_a_restored_volume_keeps_its_other_contents(tmp_path, server, volume):
    level0, level1 = _chain(tmp_path)
    (volume / "precious").write_text("the volume's own data")
    with server.client(4) as dma:
        _restore_image(dma, volume, level0, [_name("/", str(volume))])
    assert (volume / "top").read_text() == "top"
    with server.client(4) as dma:
        _restore_image(dma, volume, level1, [_name("/sub", str(volume))])
    assert (volume / "precious").read_text() == "the volume's own data"
    assert {"sub", "top", "new", "precious"} <= set(os.listdir(volume))
    assert sorted(os.listdir(volume / "sub")) == ["kept", "removed"]
