"""Fuzz targets for the pax reader and the restorer, shared by the hypothesis tests (short runs
in CI) and ``benchmarks/fuzz_engine.py`` (long runs).

Inputs are mutations of valid streams (a small tree of every kind, dumped by the engine) and of
crafted hostile members, with header checksums fixed after each mutation so the mutated fields
reach the parsers instead of stopping at the checksum. The contracts checked:

- reader: only a :class:`StreamError` may escape; member offsets only grow; the reader never
  reads past the input; every input ends (the caller bounds the time).
- restorer: ``run()`` never raises; nothing outside the target changes (bytes, modes, owners,
  mtimes, link counts, symlink targets) in a sandbox of canaries the restoring user could write.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from ndmpd.engine import pax
from ndmpd.engine.dump import DumpOptions, Dumper
from ndmpd.engine.reader import StreamError, StreamReader
from ndmpd.engine.restore import RestoreOptions, Restorer
from ndmpd.engine.select import Pick
from ndmpd.engine.sink import FdSink

END = bytes(1024)


class MemorySource:
    """A ByteSource over bytes (seekable, so lone hard links are exercised too)."""

    seekable = True

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.high_water = 0

    def readinto(self, view: memoryview) -> int:
        got = min(len(view), len(self.data) - self.pos)
        view[:got] = self.data[self.pos:self.pos + got]
        self.pos += got
        self.high_water = max(self.high_water, self.pos)
        return got

    def seek(self, offset: int) -> None:
        self.pos = min(max(offset, 0), len(self.data))


# -- seeds -------------------------------------------------------------------------------------


def build_seed_tree(root: Path) -> Path:
    """Every kind of entry, small: files, an empty file, a sparse file, hard links, symlinks
    (in and out of the tree), a FIFO, a long and a non-UTF-8 name, xattrs, odd modes."""
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"hello\n" * 100)
    (root / "empty").write_bytes(b"")
    os.link(root / "dir" / "file", root / "dir" / "sub" / "hard")
    os.symlink("dir/file", root / "link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.mkfifo(root / "fifo")
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(300_000)
        f.write(b"island")
    (root / ("n" * 150)).write_bytes(b"long name")
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1")
    try:
        os.setxattr(root / "dir" / "file", "user.note", b"\x00\xff")
    except OSError:
        pass
    os.chmod(root / "dir" / "sub", 0o2750)
    return root


def dump_bytes(root: Path, labels: dict[str, str] | None = None) -> bytes:
    path = root.parent / (root.name + ".tar")
    with open(path, "wb") as out:
        sink = FdSink(out.fileno())
        try:
            Dumper(str(root), sink, DumpOptions(labels=labels or {})).run()
        finally:
            sink.close(drain=False)
    return path.read_bytes()


def _member(name: bytes, data: bytes = b"", typeflag: bytes = pax.REGTYPE, records: bytes = b"",
            linkname: bytes = b"") -> bytes:
    head = pax.extended_header(records) if records else b""
    return (head + pax.ustar_block(name[:100], 0o644, 0, 0, len(data), 0, typeflag, linkname[:100])
            + data + bytes(pax.round_up(len(data)) - len(data)))


def crafted_streams() -> list[bytes]:
    """Hostile members a mutation would rarely find on its own."""
    r = pax.pax_record
    neg = bytearray(pax.ustar_block(b"././@LongLink", 0o644, 0, 0, 0, 0, pax.GNU_LONGNAME))
    neg[124:136] = b"\xff" * 8 + b"\xff\xff\xfe\x00"
    neg[148:156] = b"%06o\0 " % (pax.block_sum(bytes(neg[:148]) + b" " * 8 + bytes(neg[156:])))
    level1 = pax.extended_header(r(b"NDMPD.level", b"1"), pax.XGLTYPE)
    return [
        bytes(neg) + _member(b"after", b"x") + END,
        _member(b"../escape", b"x") + _member(b"/abs", b"x") + _member(b"a/../../up", b"x") + END,
        _member(b"x", b"1", records=r(b"path", b"../../outside/canary")) + END,
        _member(b"x", b"1", records=r(b"path", b"a/./../..//b")) + END,
        _member(b"out", typeflag=pax.SYMTYPE, linkname=b"../outside") + _member(b"out/canary", b"pwn") + END,
        _member(b"abs", typeflag=pax.SYMTYPE, linkname=b"/") + _member(b"abs/tmp/pwn", b"pwn") + END,
        _member(b"h", typeflag=pax.LNKTYPE, linkname=b"../outside/canary") + END,
        _member(b"h", typeflag=pax.LNKTYPE, records=r(b"linkpath", b"/etc/passwd")) + END,
        _member(b"s", b"ab", records=r(b"GNU.sparse.major", b"1") + r(b"GNU.sparse.realsize", b"99999999999999")
                + r(b"GNU.sparse.name", b"../outside/sparse")) + END,
        _member(b"s", b"9999999\n" + bytes(504), records=r(b"GNU.sparse.major", b"1")
                + r(b"GNU.sparse.realsize", b"10")) + END,
        _member(b"s", b"abc", records=r(b"GNU.sparse.major", b"0") + r(b"GNU.sparse.size", b"5")
                + r(b"GNU.sparse.map", b"0,3," * 50 + b"1")) + END,
        _member(b"big", b"x", records=r(b"size", b"99999999999999999")) + END,
        _member(b"", b"x") + _member(b".", b"x") + _member(b"./", typeflag=pax.DIRTYPE) + END,
        level1 + _member(b"./", typeflag=pax.DIRTYPE, records=r(b"GNU.dumpdir", b"Ykeep\0\0")) + END,
        level1 + _member(b"./sub/", typeflag=pax.DIRTYPE, records=r(b"GNU.dumpdir", b"\0")) + END,
        _member(b"d", typeflag=pax.DIRTYPE) + _member(b"d", b"file over dir") + _member(b"d/x", b"x") + END,
        _member(b"x", b"1", records=r(b"SCHILY.xattr.security.capability", b"\x01" * 20)
                + r(b"SCHILY.xattr.trusted.x", b"y")) + END,
        _member(b"dev", typeflag=pax.CHRTYPE) + _member(b"blk", typeflag=pax.BLKTYPE) + END,
        pax.extended_header(r(b"path", b"g") * 3, pax.XGLTYPE) + _member(b"a", b"1") + _member(b"b", b"2") + END,
    ]


def seed_streams(workdir: Path) -> list[bytes]:
    """The valid streams mutations start from, plus the crafted ones."""
    tree = build_seed_tree(workdir / "seed")
    return [dump_bytes(tree), dump_bytes(tree, {"level": "1"})] + crafted_streams()


# -- mutations ---------------------------------------------------------------------------------

_FIELDS = [slice(0, 100), slice(100, 108), slice(108, 116), slice(116, 124), slice(124, 136),
           slice(136, 148), slice(156, 157), slice(157, 257), slice(329, 337), slice(337, 345), slice(345, 500)]
_NUMBERS = [b"\xff" * 12, b"\x80" + b"\xff" * 11, b"\xff" * 11 + b"\x00", b"77777777777\0", b"-1\0", b"\0" * 12,
            b"99999999999\0", b"\x80" + bytes(10) + b"\x01"]
_RECORDS = [(b"path", b"../x"), (b"path", b"/abs"), (b"path", b"a\0b"), (b"path", b""), (b"path", b"."),
            (b"linkpath", b"../../x"), (b"size", b"-5"), (b"size", b"99999999999999999999"),
            (b"size", b"4096"), (b"mtime", b"1e99"), (b"mtime", b"-99999999999999999999.5"), (b"uid", b"-1"),
            (b"uid", b"4294967295"), (b"gid", b"1_000"), (b"uname", b"r\0oot"), (b"GNU.sparse.major", b"1"),
            (b"GNU.sparse.map", b"0,1,99999999999999999,1"), (b"GNU.sparse.realsize", b"-1"),
            (b"GNU.dumpdir", b"Yx\0Nz\0\0"), (b"SCHILY.xattr.user.\0", b"v"), (b"SCHILY.xattr.", b"v"),
            (b"NDMPD.level", b"1"), (b"comment", b"ndmpd.link-offset=0"), (b"hdrcharset", b"BINARY")]
TYPEFLAGS = [pax.REGTYPE, pax.LNKTYPE, pax.SYMTYPE, pax.CHRTYPE, pax.BLKTYPE, pax.DIRTYPE, pax.FIFOTYPE,
             pax.CONTTYPE, pax.XHDTYPE, pax.XGLTYPE, pax.GNU_LONGNAME, pax.GNU_LONGLINK, b"S", b"V", b"\xff"]


def _header_offsets(data: bytes) -> list[int]:
    return [at for at in range(0, len(data) - 511, 512) if data[at + 257:at + 262] == b"ustar"]


def _fix_checksum(data: bytearray, at: int) -> None:
    block = bytes(data[at:at + 148]) + b" " * 8 + bytes(data[at + 156:at + 512])
    data[at + 148:at + 156] = b"%06o\0 " % pax.block_sum(block)


def mutate(seed: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Apply ``ops`` (kind, position, value: any integers) to ``seed``, deterministically, so a
    hypothesis example and a benchmark input are replayed the same way."""
    data = bytearray(seed)
    for kind, position, value in ops:
        heads = _header_offsets(data)
        kind %= 9
        if kind == 0 and data:                           # flip a byte anywhere
            data[position % len(data)] ^= (value % 255) + 1
        elif kind in (1, 2) and heads:                   # a header field: random bytes or a boundary number
            at = heads[position % len(heads)]
            field = _FIELDS[value % len(_FIELDS)]
            width = field.stop - field.start
            raw = (_NUMBERS[value % len(_NUMBERS)] if kind == 2 else
                   random.Random(value).randbytes(width))
            data[at + field.start:at + field.stop] = raw[:width].ljust(width, b"\0")
            _fix_checksum(data, at)
        elif kind == 3 and heads:                        # a typeflag
            at = heads[position % len(heads)]
            data[at + 156:at + 157] = TYPEFLAGS[value % len(TYPEFLAGS)]
            _fix_checksum(data, at)
        elif kind == 4 and heads:                        # a hostile pax record in front of a member
            at = heads[position % len(heads)]
            key, val = _RECORDS[value % len(_RECORDS)]
            data[at:at] = pax.extended_header(pax.pax_record(key, val), pax.XGLTYPE if value % 7 == 0 else pax.XHDTYPE)
        elif kind == 5 and data:                         # truncate
            del data[max(position % len(data), 0):]
        elif kind == 6 and len(data) > 1024:             # duplicate a run of blocks (repeated names, links)
            start = (position % (len(data) // 512)) * 512
            data[start:start] = data[start:start + 512 * (1 + value % 4)]
        elif kind == 7 and len(data) > 1024:             # drop a run of blocks
            start = (position % (len(data) // 512)) * 512
            del data[start:start + 512 * (1 + value % 3)]
        elif kind == 8 and heads:                        # a name from another header (collisions)
            at, other = heads[position % len(heads)], heads[value % len(heads)]
            data[at:at + 100] = data[other:other + 100]
            _fix_checksum(data, at)
    return bytes(data)


def random_ops(rng: random.Random, count: int | None = None) -> list[tuple[int, int, int]]:
    return [(rng.randrange(9), rng.randrange(1 << 30), rng.randrange(1 << 30))
            for _ in range(count if count is not None else rng.randrange(1, 6))]


# -- the reader target ---------------------------------------------------------------------


def fuzz_reader(data: bytes) -> int:
    """List ``data``; returns the member count. Raises AssertionError (or whatever escaped)
    when a contract is broken."""
    source = MemorySource(data)
    reader = StreamReader(source, cancel=threading.Event())
    last = -1
    count = 0
    try:
        for member in reader.members():
            assert member.offset > last, f"member offset went back: {member.offset} after {last}"
            assert member.size >= 0
            last = member.offset
            count += 1
            if count % 3 == 0 and member.size:          # read some data, as the restore does
                for _ in reader.chunks(min(member.size, 4096)):
                    pass
    except StreamError:
        pass
    assert source.high_water <= len(data)
    return count


# -- the restorer target -------------------------------------------------------------------


@dataclass
class Sandbox:
    """``root/outside`` (canaries) and ``root/target``, both writable by the restoring user;
    ``root/target`` is emptied between inputs."""

    root: Path

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    def create(self) -> "Sandbox":
        self.root.mkdir(parents=True, exist_ok=True)
        (self.outside / "dir").mkdir(parents=True, exist_ok=True)
        (self.outside / "canary").write_bytes(b"must stay")
        (self.outside / "dir" / "inner").write_bytes(b"inner canary")
        os.chmod(self.outside / "canary", 0o666)
        if not (self.outside / "link").is_symlink():
            os.symlink("canary", self.outside / "link")
        os.utime(self.outside / "canary", ns=(10**18, 10**18))
        self.target.mkdir(exist_ok=True)
        return self

    def snapshot(self) -> dict:
        """Everything outside the target: bytes, mode, owner, mtime, link count, symlink target."""
        seen = {}
        for path in [self.root, *sorted(self.outside.rglob("*")), self.outside]:
            st = os.lstat(path)
            entry = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size,
                     st.st_mtime_ns if path != self.root else 0)
            if stat.S_ISREG(st.st_mode):
                entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(path),)
            seen[str(path)] = entry
        seen["root entries"] = sorted(os.listdir(self.root))
        return seen

    def reset_target(self) -> None:
        """Empty the target, whatever modes the restore left on its directories (an unprivileged
        user cannot remove entries of a directory restored read-only until it is opened up)."""
        if os.path.lexists(self.target) and (os.path.islink(self.target) or not os.path.isdir(self.target)):
            os.unlink(self.target)
        elif os.path.lexists(self.target):
            pending = [str(self.target)]
            while pending:
                directory = pending.pop()
                os.chmod(directory, 0o700)
                with os.scandir(directory) as entries:
                    pending.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
            shutil.rmtree(self.target)
        self.target.mkdir()


_PICKS = [(), (Pick.parse("dir"),), (Pick.parse("dir=elsewhere"),), (Pick.parse("dir/sub="),),
          (Pick.parse("=copy"),), (Pick.parse("link"), Pick.parse("dir/sub/hard"))]


def fuzz_restore(data: bytes, sandbox: Sandbox, variant: int = 0) -> None:
    """Restore ``data`` into the sandbox's target with one of a few option sets; raises when
    ``run()`` raised or anything outside the target changed."""
    before = sandbox.snapshot()
    options = RestoreOptions(picks=_PICKS[variant % len(_PICKS)], existing=("overwrite", "keep", "newer")[variant % 3],
                             incremental=(None, True)[variant % 2])
    try:
        Restorer(str(sandbox.target), MemorySource(data), options).run()
    finally:
        after = sandbox.snapshot()
        assert after == before, f"outside the target changed: {_diff(before, after)}"
        sandbox.reset_target()


def _diff(before: dict, after: dict) -> list[str]:
    return [f"{key}: {before.get(key)} -> {after.get(key)}" for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)][:5]

