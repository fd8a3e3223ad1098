"""Extended attributes (POSIX ACLs included, as ``system.posix_acl_*``) in ``SCHILY.xattr.*`` records.

Names under ``user.ndmpd.`` are ndmpd's own bookkeeping (restored.py): dumps leave them out and
restores refuse them, so no image can claim that a restore put something somewhere."""

from __future__ import annotations

import errno
import os

from .pax import pax_record

PREFIX = b"SCHILY.xattr."
RESERVED_PREFIX = "user.ndmpd."
_RESERVED = RESERVED_PREFIX.encode()
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.EPERM, errno.EACCES)


def read_records(target: int | str, follow: bool = False) -> bytes:
    """Pax records for every xattr of an open fd (or a path, not followed); empty when none."""
    try:
        names = os.listxattr(target, follow_symlinks=follow) if isinstance(target, str) \
            else os.listxattr(target)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return b""
        raise
    records = b""
    for name in sorted(names):
        if name.startswith(RESERVED_PREFIX):
            continue
        try:
            value = os.getxattr(target, name, follow_symlinks=follow) if isinstance(target, str) \
                else os.getxattr(target, name)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                continue
            raise
        records += pax_record(PREFIX + name.encode("utf-8", "surrogateescape"), value)
    return records


def drop_others(fd: int, keep: list[tuple[bytes, bytes]]) -> None:
    """Remove the xattrs of ``fd`` that ``keep`` does not name (ndmpd's own stay): a directory a
    restore moved into place takes exactly the image's set."""
    wanted = {key.decode("utf-8", "surrogateescape") for key, _ in keep}
    for name in os.listxattr(fd):
        if name not in wanted and not name.startswith(RESERVED_PREFIX):
            os.removexattr(fd, name)


def apply(target: int | str, xattrs: list[tuple[bytes, bytes]], follow: bool = False) -> list[str]:
    """Set xattrs on an fd or an unfollowed path; returns one message per attribute refused."""
    refused = []
    for key, value in xattrs:
        name = key.decode("utf-8", "surrogateescape")
        if key.startswith(_RESERVED):
            refused.append(f"xattr {name}: reserved for ndmpd's own bookkeeping; not restored")
            continue
        try:
            if isinstance(target, str):
                os.setxattr(target, name, value, follow_symlinks=follow)
            else:
                os.setxattr(target, name, value)
        except OSError as exc:
            refused.append(f"xattr {name}: {exc.strerror}")
    return refused
