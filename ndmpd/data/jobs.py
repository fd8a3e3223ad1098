"""The DATA service's jobs, run on a worker thread: backup, recover, recover-filehist.

Each job gets a connected data socket and a :class:`JobHost` (the session side: posts,
log messages, reads); it returns the halt reason. The engine does the work; this module
only joins it to NDMP: environment in, file history and log messages out, direct access
through NOTIFY_DATA_READ.
"""

from __future__ import annotations

import logging
import os
import socket
import stat as st
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..engine.dump import DumpAborted, DumpMeter
from ..engine.dumpdates import DumpDates
from ..engine.job import DumpRequest, dump_volume
from ..engine.journal import ChangeJournal
from ..engine.pax import DIRTYPE, SYMTYPE, CHRTYPE, BLKTYPE, FIFOTYPE, LNKTYPE
from ..engine.reader import Member, ReadCancelled, StreamError, StreamReader, TruncatedStream, member_problem
from ..engine.report import NOT_FOUND, Failure, bounded
from ..engine.restore import RestoreAborted, RestoreOptions, Restorer
from ..engine.select import Pick, clean_path
from ..mover.handoff import Handoff
from ..snapshots import SnapshotError
from ..wire import C
from .env import JobEnv, effective
from .history import FhRecord, FileHistory
from .places import Place
from .source import RECORD, DataReadSource, SourceClosed

log = logging.getLogger("ndmpd.data")
_ENGINE_LOG = logging.getLogger("ndmpd.engine")         # what the dump job notes (engine.job)
DELIVERY_POLL = 0.25
IMAGE_SIZE_VAR = "NDMPD_IMAGE_SIZE"
SNAPSHOT_TIME_VAR = "NDMPD_SNAPSHOT_TIME"   # when the image's view of the volume was taken (unix seconds)
RECORD_SIZE_VAR = "NDMPD_RECORD_SIZE"    # recover: the mover's record size, the grid of direct access reads


class JobHost(Protocol):
    """What a job needs from its session."""

    version: int
    cancel: threading.Event

    def post(self, code: int, body: object) -> None: ...
    def post_encoded(self, code: int, body: bytes, on_sent: Callable[[], None]) -> None: ...
    def log_message(self, text: str, level: str = "normal") -> None: ...
    def log_file(self, name: str, ok: bool, why: str = "", kind: str = NOT_FOUND) -> None: ...
    def request_read(self, offset: int, length: int) -> None: ...
    def progress(self, processed: int) -> None: ...
    def follow(self, meter: DumpMeter) -> None: ...
    def medium_end(self) -> str: ...


@dataclass
class Outcome:
    reason: int
    env: list[tuple[str, str]] = field(default_factory=list)
    why: str = ""                     # the halt's text reason (v2/v3 NOTIFY_DATA_HALTED carry it)
    summary: str = ""                 # a LOG_MESSAGE sent right before NOTIFY_DATA_HALTED, with it


def _warner(host: JobHost) -> Callable[[str], None]:
    """The engine's warnings, as LOG_MESSAGE warnings to the DMA."""
    return lambda text: host.log_message(text, "warning")


def _history(host: JobHost, env: JobEnv) -> FileHistory | None:
    if env.hist == "n":
        return None
    return FileHistory(host.version, env.hist, host.post_encoded, host.cancel)


def backup(host: JobHost, env: JobEnv, sock: socket.socket, state_dir: Path,
           handoff: Handoff | None = None, journal: ChangeJournal | None = None) -> Outcome:
    """Dump the volume into the data connection (or, LOCAL, hand the buffers to the mover);
    SUCCESSFUL only once the peer has every byte."""
    volume = env.volume
    assert volume is not None
    only = _selected_files(host, env)
    if only is None:
        host.log_message(f"none of FILES={','.join(env.files)} is in {volume.name}: nothing to back up", "error")
        return Outcome(C.DATA_HALT_INTERNAL_ERROR)
    if only and env.update:
        host.log_message("FILES dumps part of the volume: its dump date is not recorded (UPDATE=n)", "warning")
    request = DumpRequest(source=Path(volume.path), key=volume.name, state_dir=state_dir, level=env.level,
                          base_token=env.base_token, update=env.update and not only,
                          snapshot=env.snapshot or volume.snapshot, excludes=env.excludes, only=only,
                          hold=env.hold if not only else None, journal=journal)
    history = _history(host, env)
    warn = _warner(host)
    meter = DumpMeter()
    host.follow(meter)            # DATA_GET_STATE reads the bytes as they go, not per record
    try:
        outcome = dump_volume(request, handoff.put if handoff else sock.fileno(),
                              history.add_entry if history else None, None, warn, host.cancel, meter,
                              _ENGINE_LOG.info)
    except DumpAborted:
        return _undelivered(host, volume.name, "") or Outcome(C.DATA_HALT_ABORTED)
    except SnapshotError as exc:        # the volume's (or the DMA's) snapshot mode cannot work here
        host.log_message(f"backup of {volume.name} not started: {exc}", "error")
        return Outcome(C.DATA_HALT_INTERNAL_ERROR, why=str(exc))
    except OSError as exc:
        broken = isinstance(exc, (BrokenPipeError, ConnectionError))
        ended = _undelivered(host, volume.name, str(exc.strerror or exc)) if broken else None
        if ended is not None:
            return ended
        if host.cancel.is_set():
            return Outcome(C.DATA_HALT_ABORTED)
        why = f"backup of {volume.name} failed: {exc.strerror or exc}"
        host.log_message(why, "error")
        return Outcome(C.DATA_HALT_INTERNAL_ERROR, why=why)
    if history:
        history.finish()
        if history.spilled_bytes:
            log.info("file history waited on disk for the DMA: %d bytes", history.spilled_bytes)
    result = outcome.result
    meter.finish(result.bytes_written)
    if not (_delivered(sock, host.cancel) if handoff is None else _handed_over(handoff, host.cancel)):
        outcome.revert_date()
        cut = handoff.cut if handoff is not None else getattr(sock, "cut", "")   # a TLS stream cut short
        return (_undelivered(host, volume.name, cut or "the peer did not take the whole image")
                or Outcome(C.DATA_HALT_ABORTED))
    summary = (f"backup of {volume.name} complete: level {outcome.level}, {result.entries} entries, "
               f"{result.bytes_written} bytes ({outcome.base.note})")
    extra = {"LEVEL": str(outcome.level), "DUMP_DATE": outcome.dump_date,
             "BASE_DATE": env.base_token or None, "UPDATE": "y" if request.update else "n",
             "SNAPSHOT": outcome.snapshot_mode, IMAGE_SIZE_VAR: str(result.bytes_written),
             SNAPSHOT_TIME_VAR: f"{int(outcome.dump_date) / 1e9:.6f}"}
    return Outcome(C.DATA_HALT_SUCCESSFUL, effective(env, **extra), summary=summary)


def release(host: JobHost, env: JobEnv, state_dir: Path) -> Outcome:
    """NDMPD_RELEASE: forget a replica's hold on this volume's dump indexes; nothing is sent."""
    assert env.volume is not None and env.hold is not None
    found = DumpDates(state_dir).release(env.volume.name, env.hold)
    summary = f"hold {env.hold} of {env.volume.name} {'released' if found else 'was not kept: nothing to release'}"
    return Outcome(C.DATA_HALT_SUCCESSFUL, effective(env), summary=summary)


def _undelivered(host: JobHost, name: str, failure: str) -> Outcome | None:
    """The image did not all reach the peer: why, said once to the DMA. None: the job was
    aborted and nothing else went wrong (the caller answers ABORTED without a word).

    When this session's mover ended the transfer at the end of its medium (no next tape, or a
    media error), that is the reason, and the halt is ABORTED (the DMA stopped the mover there,
    nothing failed on the data side); else the data connection broke (CONNECT_ERROR)."""
    cause = host.medium_end()
    if cause:
        why = f"backup of {name} incomplete: {cause}; the image on that medium is not usable"
        host.log_message(why, "error")
        return Outcome(C.DATA_HALT_ABORTED, why=why)
    if host.cancel.is_set() or not failure:
        return None
    why = f"backup of {name} incomplete: {failure}"
    host.log_message(why, "error")
    return Outcome(C.DATA_HALT_CONNECT_ERROR, why=why)


def _selected_files(host: JobHost, env: JobEnv) -> tuple[bytes, ...] | None:
    """FILES as paths relative to the volume: given as in the index ("/dir/file"), relative, or
    as a host path inside the volume; () for the whole volume, None when nothing listed exists.
    Entries that do not exist (or climb out with "..") are reported and skipped."""
    assert env.volume is not None
    root = str(env.volume.path).rstrip("/")
    chosen = []
    for name in env.files:
        name = name.strip()
        if name == root or name.startswith(root + "/"):
            name = name[len(root):]
        rel = clean_path(name.encode("utf-8", "surrogateescape"))
        if not rel:
            return ()                                     # the volume's root: all of it
        if b".." in rel.split(b"/") or not os.path.lexists(os.path.join(root.encode(), rel)):
            host.log_message(f"FILES entry {name!r} is not in {env.volume.name}; skipped", "warning")
            continue
        chosen.append(rel)
    return tuple(chosen) if chosen or not env.files else None


def _delivered(sock: socket.socket, cancel: threading.Event) -> bool:
    """Half-close, then wait for the peer to close: only then has it read every byte."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    sock.settimeout(DELIVERY_POLL)
    while not cancel.is_set():
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except OSError:
            return False
    return False


def _handed_over(handoff: Handoff, cancel: threading.Event) -> bool:
    """LOCAL: the end of the stream, then wait until the mover has taken every buffer."""
    handoff.end()
    return handoff.wait_finished(cancel)


# -- recover ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """One nlist entry: what to restore, where, and where in the image it starts."""

    name: str                        # as the DMA named it (for LOG_FILE)
    source: bytes                    # archive path, relative; b"" is the whole image
    place: Place
    fh_info: int | None              # None: unknown, read sequentially


def recover(host: JobHost, env: JobEnv, wanted: list[Wanted], sock: socket.socket) -> Outcome:
    """Restore the nlist (or the whole image) from the data connection."""
    sock.settimeout(DELIVERY_POLL)
    image_size = _env_count(env, IMAGE_SIZE_VAR)
    direct = env.direct and wanted and all(w.fh_info is not None and w.source for w in wanted)
    source = DataReadSource(sock, host.request_read, host.cancel, image_size, sequential=not direct,
                            record=_env_count(env, RECORD_SIZE_VAR, least=1) or RECORD)
    root = wanted[0].place.root
    found: set[bytes] = set()
    failed: dict[bytes, Failure] = {}

    named = {w.source for w in wanted}

    def done(member: Member, placed: bytes, failure: Failure | None) -> None:
        """Keep the failures LOG_FILE reports: those of named entries, and the first few."""
        if failure is not None:
            path = clean_path(member.name)
            if path in named or len(failed) < 3:
                failed[path] = failure

    try:
        if direct:
            labels = _image_labels(source, host.cancel)
            for item in sorted(wanted, key=lambda w: w.fh_info):
                picks = (Pick(item.source, item.place.relative),)
                result = _restore(root, source, picks, True, host, done, item.fh_info, labels)
                found.update(result.restored)
        else:
            picks = tuple(Pick(w.source, w.place.relative) for w in wanted)
            result = _restore(root, source, picks, False, host, done, 0)
            found.update(result.restored)
            if not result.complete:
                host.log_message("the image ended early; what it held was restored", "error")
    except (RestoreAborted, StreamError, SourceClosed) as exc:
        if host.cancel.is_set():
            return Outcome(C.DATA_HALT_ABORTED)
        host.log_message(f"restore failed: {exc}", "error")
        _log_files(host, wanted, found, failed)
        return Outcome(C.DATA_HALT_CONNECT_ERROR)
    source.finish()
    _log_files(host, wanted, found, failed)
    host.progress(source.bytes_received)
    return Outcome(C.DATA_HALT_SUCCESSFUL, effective(env))


def _image_labels(source: DataReadSource, cancel: threading.Event) -> dict[str, str]:
    """The image's labels, in the global header at its start: an incremental's level and the
    volume decide which deletions its restore replays, and direct access starts past them.
    Costs one first slice of the image."""
    source.seek(0)
    reader = StreamReader(source, 0, cancel=cancel)
    try:
        next(iter(reader.members()), None)
    except (StreamError, TruncatedStream):
        pass
    return dict(reader.labels)


def _restore(root: bytes, source: DataReadSource, picks: tuple[Pick, ...], stop: bool, host: JobHost,
             done, offset: int, labels: dict[str, str] | None = None):
    whole = len(picks) == 1 and not picks[0].source and not picks[0].target
    options = RestoreOptions(picks=() if whole else picks, stop_when_done=stop, labels=labels or {})
    restorer = Restorer(root, source, options, report=_warner(host),
                        progress=lambda at, entries: host.progress(source.bytes_received),
                        cancel=host.cancel, entry_done=done)
    return restorer.run(offset)


def _log_files(host: JobHost, wanted: list[Wanted], found: set[bytes], failed: dict[bytes, Failure]) -> None:
    """One LOG_FILE per nlist entry, with the kind of the failure that kept it out (the first
    one, for the whole image) and the text of up to three."""
    for item in wanted:
        if not item.source:
            first = next(iter(failed.values()), None)
            host.log_file(item.name, first is None, "; ".join(f.text for f in list(failed.values())[:3]),
                          first.kind if first else NOT_FOUND)
        elif item.source in failed:
            failure = failed[item.source]
            host.log_file(item.name, False, failure.text, failure.kind)
        else:
            ok = item.source in found
            host.log_file(item.name, ok, "" if ok else "not in the image", NOT_FOUND)


def _env_count(env: JobEnv, name: str, least: int = 0) -> int | None:
    """An integer env value of at least ``least``; None when absent or not one."""
    raw = env.value(name)
    try:
        value = int(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and value >= least else None


# -- recover file history --------------------------------------------------------------------

_MODE_OF = {DIRTYPE: st.S_IFDIR, SYMTYPE: st.S_IFLNK, CHRTYPE: st.S_IFCHR, BLKTYPE: st.S_IFBLK,
            FIFOTYPE: st.S_IFIFO}


def recover_filehist(host: JobHost, env: JobEnv, sock: socket.socket) -> Outcome:
    """List the image as file history without writing anything."""
    sock.settimeout(DELIVERY_POLL)
    source = DataReadSource(sock, host.request_read, host.cancel, _env_count(env, IMAGE_SIZE_VAR))
    if env.hist == "n":                         # a listing is file history, whatever HIST says
        env.hist = "d" if env.butype == "dump" else "f"
    history = _history(host, env)
    nodes: dict[bytes, int] = {b"": 1}
    warn = _warner(host)
    reader = StreamReader(source, 0, warn, cancel=host.cancel)
    try:
        for member in reader.members():
            if host.cancel.is_set():
                return Outcome(C.DATA_HALT_ABORTED)
            problem = member_problem(member)
            if problem:                         # garbage in a field: left out of the listing, said why
                warn(bounded(f"{os.fsdecode(member.name.replace(bytes(1), b'?'))}: not listed: {problem}"))
                continue
            path = clean_path(member.name)
            node = nodes.setdefault(path, len(nodes) + 1)
            parent = nodes.get(os.path.dirname(path), 1)
            kind = member.typeflag
            mode = member.mode | _MODE_OF.get(kind, st.S_IFREG)
            size = member.realsize if member.realsize is not None else member.size
            history.add(FhRecord(path, mode, member.uid, member.gid, 0 if kind in (DIRTYPE, LNKTYPE) else size,
                                 member.mtime_ns // 1_000_000_000, member.mtime_ns // 1_000_000_000,
                                 member.mtime_ns // 1_000_000_000, 1, node, parent, member.offset))
            host.progress(reader.offset)
    except TruncatedStream as exc:
        host.log_message(f"the image ended early: {exc}", "error")
    except (StreamError, SourceClosed) as exc:
        if host.cancel.is_set() or isinstance(exc, ReadCancelled):
            return Outcome(C.DATA_HALT_ABORTED)
        host.log_message(f"listing failed: {exc}", "error")
        return Outcome(C.DATA_HALT_CONNECT_ERROR)
    history.finish()
    source.finish()
    return Outcome(C.DATA_HALT_SUCCESSFUL, effective(env))


