"""Hostile streams: each bad entry is refused and reported, nothing lands outside the target,
and the good entries around it are restored."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from ndmpd.engine import pax
from ndmpd.engine.restore import RestoreOptions
from tests.engine_helpers import restore_from
from tests.trees import describe


def _member(name: str, kind=tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, len(data), linkname, 0o644
    return info, data


def _stream(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.fixture
def world(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch")
    target = tmp_path / "target"
    target.mkdir()
    return tmp_path, outside, target


def _untouched(outside: Path, before: dict) -> None:
    assert describe(outside) == before


def test_traversal_absolute_and_planted_symlinks_are_refused(world):
    tmp, outside, target = world
    before = describe(outside)
    stream = _stream(tmp / "evil.tar", [
        _member("good-1", data=b"one"),
        _member("../outside/secret", data=b"overwritten"),
        _member("a/../../outside/new", data=b"planted"),
        _member(str(outside / "abs"), data=b"absolute"),
        _member("evil", tarfile.SYMTYPE, linkname=str(outside)),
        _member("evil/pwned", data=b"through a symlink"),
        _member("rel-evil", tarfile.SYMTYPE, linkname="../outside"),
        _member("rel-evil/secret", data=b"through a relative symlink"),
        _member("good-2", data=b"two"),
    ])
    refused = []
    result = restore_from(stream, target, report=refused.append)
    _untouched(outside, before)
    assert (target / "good-1").read_bytes() == b"one" and (target / "good-2").read_bytes() == b"two"
    assert (target / "evil").is_symlink() and (target / "rel-evil").is_symlink()
    assert result.refused_count == 5, result.refused
    assert any("'..'" in r for r in result.refused) and any("absolute" in r for r in result.refused)
    assert any("evil/pwned" in r and "never followed" in r for r in result.refused)


def test_symlink_already_in_the_target_is_not_followed(world):
    tmp, outside, target = world
    before = describe(outside)
    os.symlink(outside, target / "dir")
    stream = _stream(tmp / "s.tar", [_member("dir/secret", data=b"x"), _member("dir/", tarfile.DIRTYPE)])
    result = restore_from(stream, target, RestoreOptions(existing="keep"))
    _untouched(outside, before)
    assert result.refused_count == 1


def test_hard_links_out_of_the_target_are_refused(world):
    tmp, outside, target = world
    before = describe(outside)
    stream = _stream(tmp / "links.tar", [
        _member("h1", tarfile.LNKTYPE, linkname="../outside/secret"),
        _member("h2", tarfile.LNKTYPE, linkname=str(outside / "secret")),
        _member("sym", tarfile.SYMTYPE, linkname=str(outside)),
        _member("h3", tarfile.LNKTYPE, linkname="sym/secret"),
        _member("h3", data=b"write through the link?"),
        _member("real", data=b"inside"),
        _member("h4", tarfile.LNKTYPE, linkname="real"),
    ])
    result = restore_from(stream, target)
    _untouched(outside, before)
    assert result.refused_count == 3, result.refused
    assert (target / "h3").read_bytes() == b"write through the link?"
    assert (target / "h3").stat().st_nlink == 1
    assert (target / "h4").stat().st_ino == (target / "real").stat().st_ino


def test_device_nodes_are_refused_when_not_allowed(world):
    tmp, outside, target = world
    dev = _member("null", tarfile.CHRTYPE)
    dev[0].devmajor, dev[0].devminor = 1, 3
    stream = _stream(tmp / "dev.tar", [dev, _member("after", data=b"ok")])
    result = restore_from(stream, target, RestoreOptions(devices=False))
    assert not os.path.lexists(target / "null")
    assert (target / "after").read_bytes() == b"ok"
    assert result.refused_count == 1 and "device node" in result.refused[0]


def test_huge_and_malformed_pax_headers_are_refused_with_their_member(world):
    tmp, _, target = world
    huge = pax.pax_record(b"comment", b"x" * (2 << 20))
    lying = b"99999999 path=somewhere\n"
    good = pax.HeaderWriter()
    stream = (pax.extended_header(huge) + pax.ustar_block(b"victim-1", 0o644, 0, 0, 5, 0, pax.REGTYPE)
              + b"AAAAA".ljust(512, b"\0")
              + pax.extended_header(lying) + pax.ustar_block(b"victim-2", 0o644, 0, 0, 5, 0, pax.REGTYPE)
              + b"BBBBB".ljust(512, b"\0")
              + good.headers(b"survivor", 0o644, 0, 0, 3, 0, pax.REGTYPE) + b"yes".ljust(512, b"\0")
              + bytes(1024))
    (tmp / "huge.tar").write_bytes(stream)
    result = restore_from(tmp / "huge.tar", target)
    assert sorted(os.listdir(target)) == ["survivor"]
    assert any("extended header" in w for w in result.warnings)
    assert any("malformed pax header" in w for w in result.warnings)


def test_damaged_header_is_skipped_to_the_next_member(world):
    tmp, _, target = world
    raw = bytearray(_stream(tmp / "ok.tar", [_member("first", data=b"1" * 600), _member("second", data=b"2"),
                                             _member("third", data=b"3")]).read_bytes())
    second = raw.index(b"second")
    raw[second - 1 + 100 + 4] ^= 0xFF     # inside the ustar block of "second": its checksum no longer holds
    (tmp / "bad.tar").write_bytes(bytes(raw))
    result = restore_from(tmp / "bad.tar", target)
    assert (target / "first").read_bytes() == b"1" * 600 and (target / "third").read_bytes() == b"3"
    assert any("damaged header" in w for w in result.warnings)


def test_truncated_stream_keeps_what_is_complete_and_no_partial_file(world):
    tmp, _, target = world
    full = _stream(tmp / "full.tar", [_member("whole", data=b"w" * 1000),
                                      _member("cut", data=b"c" * 100_000)]).read_bytes()
    (tmp / "cut.tar").write_bytes(full[:full.index(b"c" * 100) + 40_000])
    result = restore_from(tmp / "cut.tar", target)
    assert not result.complete
    assert (target / "whole").read_bytes() == b"w" * 1000
    assert not os.path.lexists(target / "cut")
    assert any("truncated" in w for w in result.warnings)


def test_garbage_and_empty_input_do_not_crash(world):
    tmp, _, target = world
    (tmp / "noise").write_bytes(os.urandom(64 << 10))
    (tmp / "empty").write_bytes(b"")
    for name in ("noise", "empty"):
        result = restore_from(tmp / name, target)
        assert result.entries == 0
    assert os.listdir(target) == []
