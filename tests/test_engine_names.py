"""NameSplitter (the restore's per-member name split, each directory part split once) gives
exactly split_safe's components and refusals, whatever the name and whatever came before it."""

from __future__ import annotations

import itertools

import pytest

from ndmpd.engine.target import NameSplitter, Refused, split_safe

PIECES = [b"", b".", b"..", b"a", b"b c", b"\xff", b"/", b"//", b"./", b"../", b"a/", b"/a", b"..a", b".a"]


def _expected(name: bytes):
    try:
        return tuple(split_safe(name))
    except Refused as exc:
        return str(exc)


def _split(splitter: NameSplitter, name: bytes):
    try:
        return splitter(name)
    except Refused as exc:
        return str(exc)


def test_every_short_name_splits_as_split_safe_splits_it():
    names = [b"".join(combo) for length in range(1, 4) for combo in itertools.product(PIECES, repeat=length)]
    splitter = NameSplitter()
    for name in names + names[::-1]:         # each twice: once fresh, once with its parent remembered
        assert _split(splitter, name) == _expected(name), name


def test_a_full_cache_starts_over_and_still_splits_right():
    splitter = NameSplitter(limit=4)
    for n in range(50):
        name = b"d%d/sub/f%d" % (n % 7, n)
        assert splitter(name) == (b"d%d" % (n % 7), b"sub", b"f%d" % n)
    assert len(splitter._parents) <= 4


@pytest.mark.parametrize("name, why", [(b"/etc/passwd", "absolute path"), (b"/x", "absolute path"),
                                      (b"a/../../x", "path contains '..'"), (b"a/..", "path contains '..'")])
def test_escapes_are_refused_even_after_their_parent_was_seen(name, why):
    splitter = NameSplitter()
    _split(splitter, name.rpartition(b"/")[0] + b"/ok")     # (refused too, but tried first)
    with pytest.raises(Refused, match=why):
        splitter(name)
