"""A cartridge on S3: the ``CartridgeMedium`` of ``medium.py`` over immutable objects.

A cartridge is the prefix ``NAME/`` holding an index object (``s3_layout.Index``: superblock,
segments, record runs; its older entries in an immutable base object) and segment objects. A write session appends to one segment: its
bytes are spooled into parts of ``part_size`` that upload from a bounded pool while the mover
keeps writing; at a sync point (a filemark, close) the multipart upload is completed and the
new index PUT, the one atomic switch. A cut (a write earlier on tape) only shortens the
index. Objects the new index no longer names are deleted after the switch, never before.

Failure mid-write: the upload is aborted (best effort; a writable open also aborts any upload
left under the cartridge and deletes unreferenced segments, so nothing stays billed once the
service is back), the medium refuses every further call with the reason, and the stored
index, hence every tape file synced before, is untouched.

Reads are ranged GETs through a small block cache with sequential read-ahead, so reading
headers costs no request each and a DAR restore fetches only the blocks it reads.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Callable, Sequence

from ..store_config import StoreConfig
from .cartridge import OVERHEAD
from .s3_client import describe, is_missing, make_client
from .s3_layout import HEADER_SIZE, TAIL_LIMIT, Index, IndexCorrupt, Segment
from .tape import DeviceBusy, MediaError

log = logging.getLogger("ndmpd.s3")
INDEX = "index"
BLOCK = 1 << 20                     # read cache granule
CACHE_BLOCKS = 48
READ_AHEAD_MAX = 8                  # blocks one sequential GET may fetch
ABORT_RETRY = 2.0                   # seconds before the first retry to abort an upload of a failed write,
ABORT_RETRY_MAX = 15.0              # doubling up to this (the upload gone within 15 s of the store's return),
ABORT_PATIENCE = 6 * 3600.0         # for as long as a store may reasonably be down (parts are billed)
NAME_LOOKUPS = 8                    # index HEADs in flight while listing cartridges
MAX_INDEX_BYTES = 64 << 20          # an index or base object past this is not one (a v2 index is KiBs)
MAX_PARTS = 10_000                  # parts of one multipart upload (S3's limit): a tape file spans segments


@dataclass
class Traffic:
    """Requests and bytes this store moved (the log says them at close; tests count them)."""

    gets: int = 0
    got: int = 0
    puts: int = 0
    put: int = 0


class Openers:
    """The S3 cartridges this process has open, by where they are (service, bucket, key
    prefix), not by which S3Store opened them: a library and a standalone drive, or two
    libraries, configured on one bucket and prefix have a store each and must still never
    both open one cartridge. One opener at a time, as flock gives a local file; a lock across
    servers is out of scope (CARTRIDGE-FORMAT.md, "On S3")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[tuple[str, str, str]] = set()

    def claim(self, where: tuple[str, str, str], url: str) -> None:
        with self._lock:
            if where in self._open:
                raise DeviceBusy(f"{url}: cartridge is in use by another drive")
            self._open.add(where)

    def release(self, where: tuple[str, str, str]) -> None:
        with self._lock:
            self._open.discard(where)


PROCESS_OPENERS = Openers()     # process-wide like the flock it stands for; tests may pass their own


class S3Store:
    """One bucket and prefix: its client, its traffic, and the process's openers."""

    def __init__(self, config: StoreConfig, client_factory: Callable[[StoreConfig], Any] = make_client,
                 openers: Openers = PROCESS_OPENERS) -> None:
        self.config = config
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        self._openers = openers
        self.traffic = Traffic()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory(self.config)
            return self._client

    def cartridge(self, name: str) -> "S3Cartridge":
        return S3Cartridge(self, name)

    def key(self, name: str, suffix: str) -> str:
        return f"{self.config.prefix}{name}/{suffix}"

    def call(self, what: str, method: str, **kwargs: Any) -> Any:
        """One S3 request; any failure (after botocore's retries) is a MediaError saying why."""
        try:
            return getattr(self.client, method)(Bucket=self.config.bucket, **kwargs)
        except MediaError:
            raise
        except Exception as exc:
            raise MediaError(describe(exc, self.config, what)) from exc

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix``."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.config.bucket, Prefix=prefix)
            return [o["Key"] for page in pages for o in page.get("Contents", [])]
        except Exception as exc:
            raise MediaError(describe(exc, self.config, f"listing {prefix or 'the bucket'}")) from exc

    def names(self) -> list[str]:
        """The cartridges under the prefix: each NAME/ prefix (one listing entry per cartridge,
        however many segments it has) that holds an index. A folder emptied by another S3 tool
        (SeaweedFS and other filer-backed stores still list it) or left without its index is not
        a cartridge; the indexes are looked up a few at a time."""
        start = len(self.config.prefix)
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.config.bucket, Prefix=self.config.prefix, Delimiter="/")
            listed = sorted(p["Prefix"][start:-1] for page in pages for p in page.get("CommonPrefixes", []))
        except Exception as exc:
            raise MediaError(describe(exc, self.config, "listing cartridges")) from exc
        if not listed:
            return []
        with ThreadPoolExecutor(max_workers=min(NAME_LOOKUPS, len(listed))) as pool:
            held = list(pool.map(lambda name: self.cartridge(name).exists(), listed))
        return [name for name, there in zip(listed, held) if there]

    def abort(self, key: str, upload_id: str) -> bool:
        """Abort a multipart upload (its parts are no longer billed); False when the service
        cannot be told now."""
        try:
            self.client.abort_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=upload_id)
            return True
        except Exception as exc:
            if is_missing(exc) or "NoSuchUpload" in str(exc):
                return True
            log.warning("%s", describe(exc, self.config, f"aborting the upload of {key}"))
            return False

    def abort_later(self, key: str, upload_id: str, patience: float = ABORT_PATIENCE) -> None:
        """Keep trying to abort an upload while the service is away, backing off to a try
        every ABORT_RETRY_MAX seconds, for hours (a store down longer than a minute or two
        must not leave its parts billed until this cartridge happens to be written again);
        after that, or once this server stops, the next writable open of the cartridge aborts it."""
        deadline = time.monotonic() + patience
        wait = ABORT_RETRY
        while time.monotonic() < deadline:
            time.sleep(wait)
            wait = min(ABORT_RETRY_MAX, wait * 2)
            if self.abort(key, upload_id):
                log.info("%s: aborted the unfinished upload %s", self.config.url(), key)
                return
        log.warning("%s: upload %s left unfinished; the next write to its cartridge aborts it",
                    self.config.url(), key)

    def require_bucket(self) -> None:
        """Before a first PUT: a missing bucket is one clear line (some services would create
        it on the PUT, filling a bucket nobody configured)."""
        try:
            self.client.head_bucket(Bucket=self.config.bucket)
        except Exception as exc:
            if is_missing(exc) or "NoSuchBucket" in str(exc):
                raise MediaError(f"{self.config.url()}: no such bucket {self.config.bucket!r} "
                                 "(create it, or fix store.bucket)") from None
            raise MediaError(describe(exc, self.config, f"checking bucket {self.config.bucket}")) from exc

    def _where(self, name: str) -> tuple[str, str, str]:
        return (self.config.endpoint or f"aws:{self.config.region}", self.config.bucket, self.key(name, ""))

    def claim(self, name: str) -> None:
        self._openers.claim(self._where(name), self.config.url(name))

    def release(self, name: str) -> None:
        self._openers.release(self._where(name))


class S3Cartridge:
    """A cartridge's location in a store (what a drive loads; compares by store and name)."""

    def __init__(self, store: S3Store, name: str) -> None:
        self.store = store
        self.name = name

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, S3Cartridge) and other.name == self.name
                and other.store.config == self.store.config)

    def __hash__(self) -> int:
        return hash((self.store.config, self.name))

    def __str__(self) -> str:
        return self.store.config.url(self.name + "/")

    def exists(self) -> bool:
        try:
            self.store.client.head_object(Bucket=self.store.config.bucket, Key=self.store.key(self.name, INDEX))
            return True
        except Exception as exc:
            if is_missing(exc):
                return False
            raise MediaError(describe(exc, self.store.config, f"looking for cartridge {self.name}")) from exc

    def create(self, header: bytes) -> None:
        if self.exists():
            raise FileExistsError(f"{self}: cartridge exists")
        self.store.require_bucket()
        body = Index(header).pack()
        self.store.call(f"creating cartridge {self.name}", "put_object", Key=self.store.key(self.name, INDEX),
                        Body=body)

    def remove(self) -> None:
        """Every object of the cartridge, its index first (so it is gone, then cleaned up)."""
        self.store.call(f"removing cartridge {self.name}", "delete_object", Key=self.store.key(self.name, INDEX))
        for key in self.store.keys(self.store.key(self.name, "")):
            self.store.call(f"removing cartridge {self.name}", "delete_object", Key=key)

    def open(self, writable: bool) -> "S3Medium":
        return S3Medium(self, writable)


@dataclass
class _Spool:
    """The segment a write session is appending: its multipart upload and unsent bytes."""

    key: str
    start: int                      # cartridge offset of its first byte
    sent: int = 0                   # bytes handed to part uploads
    buffer: bytearray = field(default_factory=bytearray)
    upload_id: str | None = None
    parts: list[Future] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.sent + len(self.buffer)


class S3Medium:
    """An open cartridge on S3 (see the module docstring). The index names only completed
    segments, so its size always ends a whole entry (``exact_end``): a segment that cannot be
    read is a MediaError, never a reason to treat the cartridge as ending earlier."""

    exact_end = True

    def __init__(self, where: S3Cartridge, writable: bool) -> None:
        self.name = str(where)
        self._where = where
        self._store = where.store
        self._config = where.store.config
        self._writable = writable
        self._broken: str | None = None
        self._closed = False
        self._spool: _Spool | None = None
        self._dirty = False
        self._starts: list[int] | None = None           # each segment's first cartridge offset
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._last_block: tuple[str, int] | None = None
        self._ahead = 1
        self.index_bytes = 0                            # the last index object PUT (benchmarks)
        self.index_put = 0                              # index and base bytes PUT by this opener
        self.tail_limit = TAIL_LIMIT                    # index entries past the base before a compaction
        self._store.claim(where.name)
        try:
            self._index = self._load()
            self._stored = self._index.objects()
            if writable:
                self._sweep()
        except BaseException:
            self._store.release(where.name)
            raise
        self._pool = ThreadPoolExecutor(self._config.uploads_in_flight, f"s3-{where.name}") if writable else None

    # ------------------------------------------------------------ index

    def _key(self, suffix: str) -> str:
        return self._store.key(self._where.name, suffix)

    def _load(self) -> Index:
        what = f"opening cartridge {self._where.name}"
        try:
            body = self._small_object(what, self._key(INDEX))
        except MediaError as exc:
            if is_missing(exc.__cause__ or exc):
                raise MediaError(f"{self.name}: no such cartridge") from None
            raise
        except IndexCorrupt as exc:
            raise MediaError(str(exc)) from None
        def base(key: str) -> bytes:
            self._own(key)
            return self._small_object(f"{what}: reading its base index", key)
        try:
            index = Index.unpack(body, self.name, base)
            for key in index.objects():
                self._own(key)
            return index
        except IndexCorrupt as exc:
            raise MediaError(str(exc)) from None

    def _small_object(self, what: str, key: str) -> bytes:
        """An index or base object, read whole only when its length could be one (an object
        of gigabytes under the index's name is refused before its body is read)."""
        answer = self._store.call(what, "get_object", Key=key)
        length = int(answer.get("ContentLength") or 0)
        if length > MAX_INDEX_BYTES:
            answer["Body"].close()
            raise IndexCorrupt(f"{self.name}: {key} is {length} bytes, more than any cartridge index "
                               f"({MAX_INDEX_BYTES >> 20} MiB); refusing it")
        return answer["Body"].read(MAX_INDEX_BYTES + 1)

    def _own(self, key: str) -> None:
        """An index may name only objects of its own cartridge: one naming others' (damaged,
        or copied from another cartridge) would have them read as ours and deleted at the
        next overwrite."""
        own = self._key("")
        if not key.startswith(own) or "/" in key[len(own):] or key == self._key(INDEX):
            raise IndexCorrupt(f"{self.name}: cartridge index names {key!r}, which is not an object of this "
                               "cartridge; refusing it (nothing is read or deleted)")

    def _put_index(self) -> None:
        """The switch: one PUT of the index object, after a new base when its tail is long
        (each filemark costs a bounded PUT, a compaction every ``tail_limit`` entries)."""
        index = self._index
        index.generation += 1
        what = f"writing the index of {self._where.name}"
        if index.tail > self.tail_limit:
            key = self._key(f"base-{index.generation:012d}-{secrets.token_hex(4)}")
            base = index.pack_base()
            self._store.call(what, "put_object", Key=key, Body=base)
            self._count_put(len(base))
            self.index_put += len(base)
            index.rebase(key)
        body = index.pack()
        self._store.call(what, "put_object", Key=self._key(INDEX), Body=body)
        self._count_put(len(body))
        self.index_bytes = len(body)
        self.index_put += len(body)
        self._dirty = False
        keep = index.objects()
        for key in sorted(self._stored - keep):
            self._delete(key)
        self._stored = keep

    def _delete(self, key: str) -> None:
        try:
            self._store.client.delete_object(Bucket=self._config.bucket, Key=key)
        except Exception as exc:        # garbage left for the next sweep, not a failed write
            log.warning("%s", describe(exc, self._config, f"deleting unused segment {key}"))

    def _sweep(self) -> None:
        """Before writing: abort uploads left under this cartridge and delete segments no index
        names (a server killed mid-write, or a service down when it was told to clean up)."""
        prefix = self._key("")
        listed = self._store.call(f"opening cartridge {self._where.name}", "list_multipart_uploads", Prefix=prefix)
        for upload in listed.get("Uploads", []):
            log.info("%s: aborting an unfinished upload of %s", self.name, upload["Key"])
            self._store.call("aborting an old upload", "abort_multipart_upload", Key=upload["Key"],
                             UploadId=upload["UploadId"])
        for key in self._store.keys(prefix):
            if key != self._key(INDEX) and key not in self._stored:
                self._delete(key)

    # ------------------------------------------------------------ state

    def _check(self) -> None:
        if self._broken is not None:
            raise MediaError(self._broken)

    def size(self) -> int:
        return self._index.size + (self._spool.length if self._spool else 0)

    # ------------------------------------------------------------ reading

    def pread(self, length: int, offset: int) -> bytes:
        self._check()
        if offset < HEADER_SIZE:
            head = self._index.header[offset:offset + length]
            rest = offset + length - HEADER_SIZE
            return head + self.pread(rest, HEADER_SIZE) if rest > 0 else head
        end = min(offset + length, self.size())
        if offset >= end:
            return b""
        spool = self._spool
        if spool is not None and end > spool.start:
            unsent = spool.start + spool.sent
            if offset >= unsent:                        # still in memory
                return bytes(spool.buffer[offset - unsent:end - unsent])
            self._commit()                              # in parts being uploaded: complete them first
        return self._read_segments(offset, end)

    def preadv(self, buffers: Sequence[bytearray | memoryview], offset: int) -> int:
        total = sum(len(b) for b in buffers)
        data = memoryview(self.pread(total, offset))
        at = 0
        for buffer in buffers:
            n = min(len(buffer), len(data) - at)
            if n <= 0:
                break
            buffer[:n] = data[at:at + n]
            at += n
        return at

    def _read_segments(self, offset: int, end: int) -> bytes:
        segments = self._index.segments
        if self._starts is None or len(self._starts) != len(segments):
            self._starts = list(accumulate((s.length for s in segments[:-1]), initial=HEADER_SIZE))
        out = bytearray()
        i = max(0, bisect_right(self._starts, offset) - 1)      # a cartridge of many tape files: no scan
        while i < len(segments) and self._starts[i] < end:
            at, segment = self._starts[i], segments[i]
            lo, hi = max(offset, at) - at, min(end, at + segment.length) - at
            if hi > lo:
                out += self._object_range(segment, lo, hi)
            i += 1
        return bytes(out)

    def _object_range(self, segment: Segment, lo: int, hi: int) -> bytes:
        first, last = lo // BLOCK, (hi - 1) // BLOCK
        data = b"".join(self._block(segment, n) for n in range(first, last + 1))
        return data[lo - first * BLOCK:hi - first * BLOCK]

    def _block(self, segment: Segment, number: int) -> bytes:
        cached = self._cache.get((segment.key, number))
        if cached is not None:
            self._cache.move_to_end((segment.key, number))
            return cached
        sequential = self._last_block == (segment.key, number - 1)
        self._ahead = min(READ_AHEAD_MAX, self._ahead * 2) if sequential else 1
        count = max(1, min(self._ahead, -(-segment.length // BLOCK) - number))
        lo, hi = number * BLOCK, min(segment.length, (number + count) * BLOCK)
        try:
            body = self._store.call(f"reading {self._where.name}", "get_object", Key=segment.key,
                                    Range=f"bytes={lo}-{hi - 1}")["Body"].read()
        except MediaError as exc:
            cause = exc.__cause__ or exc
            if is_missing(cause) or "InvalidRange" in str(cause):
                raise MediaError(f"{self.name}: segment {segment.key} is missing or shorter than its index "
                                 f"says (wanted bytes {lo}-{hi - 1})") from None
            raise
        traffic = self._store.traffic
        traffic.gets += 1
        traffic.got += len(body)
        if len(body) != hi - lo:
            raise MediaError(f"{self.name}: segment {segment.key} is shorter than its index says")
        for i in range(count):
            self._cache[(segment.key, number + i)] = body[i * BLOCK:(i + 1) * BLOCK]
            self._cache.move_to_end((segment.key, number + i))
        while len(self._cache) > CACHE_BLOCKS:
            self._cache.popitem(last=False)
        self._last_block = (segment.key, number + count - 1)
        return self._cache[(segment.key, number)]

    # ------------------------------------------------------------ writing

    def append(self, parts: Sequence[bytes | memoryview], offset: int, total: int) -> None:
        self._check()
        if offset != self.size():
            raise MediaError(f"{self.name}: write at {offset}, not at the end ({self.size()})")
        spool = self._spool
        if spool is None:
            token = secrets.token_hex(4)
            spool = self._spool = _Spool(self._key(f"seg-{self._index.generation + 1:012d}-{token}"), offset)
        for part in parts:
            spool.buffer += part
        if len(spool.buffer) >= self._config.part_size:
            self._send(spool)
            if len(spool.parts) >= MAX_PARTS:         # S3 allows 10,000 parts: go on in a new segment
                self._finish_segment()

    def _send(self, spool: _Spool) -> None:
        """Hand the spooled bytes to a part upload; wait while the pool is full (the spool's bound)."""
        if spool.upload_id is None:
            created = self._guard("starting a multipart upload", "create_multipart_upload", Key=spool.key)
            spool.upload_id = created["UploadId"]
        data, spool.buffer = spool.buffer, bytearray()      # handed over whole: no copy
        number = len(spool.parts) + 1
        assert self._pool is not None
        spool.parts.append(self._pool.submit(self._upload_part, spool.key, spool.upload_id, number, data))
        spool.sent += len(data)
        while sum(not f.done() for f in spool.parts) >= self._config.uploads_in_flight:
            next(f for f in spool.parts if not f.done()).exception()
        for future in spool.parts:
            if future.done() and future.exception() is not None:
                self._fail(future.exception(), f"uploading part {spool.parts.index(future) + 1}")

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytearray) -> dict:
        answer = self._store.client.upload_part(Bucket=self._config.bucket, Key=key, UploadId=upload_id,
                                                PartNumber=number, Body=data)
        traffic = self._store.traffic
        traffic.puts += 1
        traffic.put += len(data)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _count_put(self, size: int) -> None:
        self._store.traffic.puts += 1
        self._store.traffic.put += size

    def _guard(self, what: str, method: str, **kwargs: Any) -> Any:
        """A request of the write session: its failure breaks the session (see _fail)."""
        try:
            return getattr(self._store.client, method)(Bucket=self._config.bucket, **kwargs)
        except Exception as exc:
            self._fail(exc, what)

    def _fail(self, exc: BaseException, what: str) -> None:
        message = describe(exc, self._config, f"{what} of {self._where.name}")
        self._broken = (f"{message}; the unfinished tape file is lost, tape files written before it "
                        "are kept")
        self._abandon()
        log.error("%s", self._broken)
        raise MediaError(self._broken) from exc

    def _abandon(self) -> None:
        """Drop the spool: abort its multipart upload (the next writable open retries that)."""
        spool, self._spool = self._spool, None
        if spool is None or spool.upload_id is None:
            return
        for future in spool.parts:
            future.cancel()
        for future in spool.parts:
            if not future.cancelled():
                future.exception()
        if not self._store.abort(spool.key, spool.upload_id):
            threading.Thread(target=self._store.abort_later, args=(spool.key, spool.upload_id),
                             name=f"s3-abort-{self._where.name}", daemon=True).start()

    def _commit(self) -> None:
        """The sync point: complete the segment being written, then switch to the new index."""
        self._check()
        self._finish_segment()
        if self._dirty:
            try:
                self._put_index()
            except MediaError as exc:
                self._broken = f"{exc}; the tape files written since the last filemark are lost"
                raise MediaError(self._broken) from None

    def _finish_segment(self) -> None:
        """Complete the segment being written and list it in the index (not yet stored: the
        next sync point PUTs it; a crash before leaves an unnamed object the sweep deletes)."""
        spool, self._spool = self._spool, None
        if spool is not None and spool.length:
            self._spool = spool                           # still ours if completing fails
            if spool.upload_id is None:
                self._guard("writing a segment", "put_object", Key=spool.key, Body=spool.buffer)
                self._count_put(len(spool.buffer))
            else:
                if spool.buffer:
                    self._send(spool)
                done = []
                for number, future in enumerate(spool.parts, 1):
                    try:
                        done.append(future.result())
                    except Exception as exc:
                        self._fail(exc, f"uploading part {number}")
                self._guard("completing a multipart upload", "complete_multipart_upload", Key=spool.key,
                            UploadId=spool.upload_id, MultipartUpload={"Parts": done})
            self._spool = None
            self._index.segments.append(Segment(spool.key, spool.length))
            self._starts = None
            self._dirty = True

    def truncate(self, offset: int) -> None:
        self._check()
        if offset >= self.size():
            return
        spool = self._spool
        if spool is not None:
            if offset <= spool.start:
                self._abandon()
            elif offset >= spool.start + spool.sent:
                del spool.buffer[offset - spool.start - spool.sent:]
            else:
                self._commit()
        self._dirty = self._dirty or offset < self._index.size
        self._index.cut(offset, OVERHEAD)
        self._starts = None

    def streamed(self) -> None:
        """Uploads already stream part by part (append)."""

    def note_records(self, offset: int, length: int, count: int) -> None:
        self._index.note_records(offset, length, count, OVERHEAD)

    def records_ahead(self, offset: int) -> tuple[int, int]:
        return self._index.run_at(offset, OVERHEAD, ending=False)

    def records_behind(self, offset: int) -> tuple[int, int]:
        return self._index.run_at(offset, OVERHEAD, ending=True)

    def sync(self) -> None:
        self._commit()

    def write_header(self, header: bytes) -> None:
        self._commit()
        self._index.header = header
        self._dirty = True
        self._commit()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writable and self._broken is None:
            try:
                self._commit()
            except MediaError as exc:
                log.warning("%s", exc)
        if self._broken is not None:
            self._abandon()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        t = self._store.traffic
        log.info("%s: closed; store traffic so far: %d GETs %d bytes, %d PUTs %d bytes",
                 self.name, t.gets, t.got, t.puts, t.put)
        self._store.release(self._where.name)
