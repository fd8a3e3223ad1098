"""What restores put into a directory, kept on the directory itself (xattr ``user.ndmpd.restored``).

An incremental's dumpdir says which names a directory holds at that level; a name on disk it
does not list may be deleted only when an earlier restore of the same chain put it there. That
record lives on the directory because it then moves, is copied and is removed with it, needs no
state directory (``ndmpd restore`` has none), and costs one getxattr and one setxattr per
directory, never anything per file.

A record belongs to one image directory of one volume (``owner``: the image's volume label and
the directory's path in the image), so a subtree placed elsewhere (``sub=``, an nlist ``/sub`` ->
``/vol``), another volume's chain or a foreign image finds no name it may delete there. Names are
kept as they are while they fit; past that as 8-byte keyed BLAKE2b digests (a random key per
record: no image can choose names that collide with a file it did not restore); when even those
do not fit the file system's limit, the record is dropped, so nothing there is ever deleted.
Images may not carry these xattrs and dumps never copy them (see xattrs.RESERVED_PREFIX).
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

from .xattrs import RESERVED_PREFIX

NAME = RESERVED_PREFIX + "restored"
_MAGIC = b"ndmpd-restored 1\n"
_KEY = 16
_DIGEST = 8
_TOO_BIG = (errno.E2BIG, errno.ENOSPC, errno.ERANGE, errno.EDQUOT)
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


class Unsupported(Exception):
    """The file system keeps no user xattrs here (or this user may not set them)."""


def owner_of(volume: str, image_path: bytes) -> bytes:
    """Who a record belongs to: a volume's image directory (NUL cannot occur in either part)."""
    return volume.encode("utf-8", "surrogateescape").replace(b"\0", b"") + b"\0" + image_path


@dataclass(frozen=True)
class Record:
    """The names one owner's restores put into a directory (exact, or as keyed digests)."""

    owner: bytes
    names: frozenset[bytes] = frozenset()
    key: bytes = b""                    # set: ``digests`` hold the names, not ``names``
    digests: frozenset[bytes] = frozenset()

    def __contains__(self, name: bytes) -> bool:
        if self.key:
            return _digest(self.key, name) in self.digests
        return name in self.names


def _digest(key: bytes, name: bytes) -> bytes:
    return hashlib.blake2b(name, digest_size=_DIGEST, key=key).digest()


def _encode(owner: bytes, names: Iterable[bytes], hashed: bool) -> bytes:
    head = _MAGIC + (b"h" if hashed else b"n") + b"%d\n" % len(owner) + owner
    if not hashed:
        return head + b"\0".join(sorted(names))
    key = os.urandom(_KEY)
    return head + key + b"".join(sorted({_digest(key, name) for name in names}))


def _decode(value: bytes) -> Record | None:
    """The record in ``value``; None for anything malformed (it then authorises nothing)."""
    if not value.startswith(_MAGIC):
        return None
    rest = value[len(_MAGIC):]
    line, newline, rest = rest.partition(b"\n")
    kind = line[:1]
    if not newline or kind not in (b"n", b"h") or not line[1:].isdigit():
        return None
    size = int(line[1:])
    if size > len(rest):
        return None
    owner, body = rest[:size], rest[size:]
    if kind == b"n":
        return Record(owner, frozenset(name for name in body.split(b"\0") if name))
    key, digests = body[:_KEY], body[_KEY:]
    if len(key) != _KEY or len(digests) % _DIGEST:
        return None
    return Record(owner, key=key, digests=frozenset(digests[i:i + _DIGEST] for i in range(0, len(digests), _DIGEST)))


def read(fd: int) -> Record | None:
    """The record on the directory ``fd``; None when it has none (or a malformed one)."""
    try:
        return _decode(os.getxattr(fd, NAME))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        if exc.errno in _UNSUPPORTED:
            raise Unsupported(exc.strerror) from None
        return None                       # unreadable: nothing may be deleted by it


def reown(fd: int, record: Record, owner: bytes) -> None:
    """Give ``record`` (read from ``fd``) to ``owner``, its names unchanged (a moved directory)."""
    if record.owner == owner:
        return
    head = _MAGIC + (b"h" if record.key else b"n") + b"%d\n" % len(owner) + owner
    body = (record.key + b"".join(sorted(record.digests))) if record.key else b"\0".join(sorted(record.names))
    os.setxattr(fd, NAME, head + body)


def write(fd: int, owner: bytes, names: set[bytes] | frozenset[bytes]) -> bool:
    """Record ``names`` as restored into ``fd`` by ``owner``; False when no form fits the file
    system (the old record is then removed: nothing there may be deleted later)."""
    exact = _encode(owner, names, hashed=False)
    forms = [exact] if len(exact) <= 65536 else []
    if len(names) * _DIGEST + _KEY < len(exact):
        forms.append(_encode(owner, names, hashed=True))
    for value in forms:
        try:
            os.setxattr(fd, NAME, value)
            return True
        except OSError as exc:
            if exc.errno in _UNSUPPORTED or exc.errno in (errno.EPERM, errno.EACCES):
                raise Unsupported(exc.strerror) from None
            if exc.errno not in _TOO_BIG:
                raise
    try:
        os.removexattr(fd, NAME)
    except OSError:
        pass
    return False
