"""The header writer's cached fast path writes exactly what the general path writes."""

from __future__ import annotations

import itertools

from ndmpd.engine import pax


def test_the_fast_path_headers_are_the_general_paths_bytes():
    writer = pax.HeaderWriter()
    names = [b"./a", b"./" + b"x" * 98, b"./d/f"]
    modes = [0o100644, 0o40755, 0o104755]
    ids = [0, 1000, 65534]
    sizes = [0, 1, 511, 512, 123456789, 8 ** 11 - 1]
    times = [0, 10 ** 9, 999_999_999, 1_700_000_000_123456789, 1_700_000_000 * 10 ** 9, 10 ** 19 + 5]
    extras = [b"", pax.pax_record(b"SCHILY.xattr.user.a", b"v")]
    for name, mode, uid, size, ns, extra in itertools.product(names, modes, ids, sizes, times, extras):
        for _ in range(2):                  # the second time from the caches
            fast = writer.headers(name, mode, uid, uid, size, ns, pax.REGTYPE, extra=extra)
            assert fast == writer._general(name, mode, uid, uid, size, ns, pax.REGTYPE, b"", 0, 0, extra)


def test_the_ustar_layout_is_one_block():
    assert pax._USTAR.size == pax.BLOCK
    assert sum(width for _, width in pax.USTAR_FIELDS) == pax.BLOCK
