"""The dump's walk: names as bytes in byte order, with or without /proc."""

from __future__ import annotations

import os

from ndmpd.engine.stat_helper import sorted_names
from ndmpd.engine.reader import StreamReader
from tests.engine_helpers import build_every_case, dump_to


def test_names_come_in_byte_order_even_where_str_order_differs(tmp_path):
    names = [b"\xee\x80\x80-private-use", b"\xf0-latin1-byte", b"a", b"B", b"caf\xc3\xa9"]
    for name in names:
        open(os.path.join(os.fsencode(tmp_path), name), "wb").close()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted_names(fd) == sorted(names)
    finally:
        os.close(fd)


def test_without_proc_the_image_is_the_same(tmp_path, monkeypatch):
    src = build_every_case(tmp_path / "src")
    dump_to(src, tmp_path / "with.tar")
    real_listdir = os.listdir

    def no_proc(path="."):
        if isinstance(path, bytes) and path.startswith(b"/proc/"):
            raise FileNotFoundError(path)
        return real_listdir(path)
    monkeypatch.setattr(os, "listdir", no_proc)
    dump_to(src, tmp_path / "without.tar")
    assert (tmp_path / "with.tar").read_bytes() == (tmp_path / "without.tar").read_bytes()


def test_the_image_is_the_same_with_and_without_file_history_and_its_offsets_name_the_entries(tmp_path):
    """A file's member goes through one sink call without history and three with it: the
    bytes are the same, and every history offset is where that entry's headers start."""
    src = build_every_case(tmp_path / "src")
    for d in range(3):
        (src / f"many{d}").mkdir()
        for f in range(40):
            (src / f"many{d}" / f"f{f:02d}").write_bytes(bytes([f]) * (f * 97 % 3000))
    dump_to(src, tmp_path / "plain.tar")
    entries = []
    dump_to(src, tmp_path / "history.tar", history=entries.append)
    image = (tmp_path / "history.tar").read_bytes()
    assert (tmp_path / "plain.tar").read_bytes() == image
    with open(tmp_path / "history.tar", "rb") as stream:
        members = {member.offset: member.name for member in StreamReader(stream.fileno()).members()}
    assert len(entries) == len(members) > 120
    for entry in entries:
        assert members[entry.offset].rstrip(b"/") == (b"./" + entry.path if entry.path else b".")
