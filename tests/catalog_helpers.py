"""FH post bodies as a DMA decodes them, built through ndmpd's own encoder (the wire path)."""

from __future__ import annotations

import stat

from ndmpd.data.fh_wire import FhWire
from ndmpd.wire import REQUEST, protocol

V4 = protocol(4)
_WIRE = FhWire(4)


def file_posts(paths: list[bytes], batch: int = 512, start_offset: int = 0) -> list[tuple[int, object]]:
    """FH_ADD_FILE posts naming ``paths`` (regular files of 10 bytes; a path ending in / is a dir)."""
    posts = []
    for i in range(0, len(paths), batch):
        entries = []
        for j, path in enumerate(paths[i:i + batch], start=i):
            is_dir = path.endswith(b"/") or path == b"/"
            mode = (stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644)
            name = path.rstrip(b"/") or b"/"
            entries.append(_WIRE.file(name, mode, 0, 0, 0 if is_dir else 10, 1_700_000_000 + j, 0, 0, 1,
                                      1000 + j, start_offset + 512 * j))
        code, body = _WIRE.post("file", entries)
        posts.append((code, V4.decode_body(code, REQUEST, body, 0)))
    return posts
