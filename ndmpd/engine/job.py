"""One dump job from start to end: pick the base, take the snapshot, write the stream, record it.

The snapshot is removed whatever happens (error, abort, broken pipe); the dump date is
recorded only after a dump that completed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..snapshots import SNAPSHOT_DIR, choose
from .dump import DumpMeter, DumpOptions, Dumper, DumpResult, HistoryCallback, ProgressCallback
from .dumpdates import Base, DumpDates, make_token
from .sink import FdSink

if TYPE_CHECKING:
    from .journal import ChangeJournal    # the server's: a command-line dump never loads it

@dataclass(frozen=True)
class DumpRequest:
    """A dump of one volume (or any directory)."""

    source: Path
    key: str                                 # dump dates are recorded under this (volume name)
    state_dir: Path
    level: int = 0
    base_token: str | None = None            # token-based incremental (NDMP BASE_DATE)
    update: bool = False                     # record this dump's date for later levels
    hold: str | None = None                  # keep this dump's index as a replica's base (NDMPD_HOLD);
                                             # with base_token, a lean incremental (see dump.py)
    snapshot: str = "auto"
    excludes: tuple[str, ...] = ()
    only: tuple[bytes, ...] = ()             # just these paths (relative to source) and what is under them
    xattrs: bool = True
    journal: ChangeJournal | None = None     # the volume's change journal: a lean update lists only
                                             # what it says changed (None from it: the dump walks)


@dataclass
class DumpOutcome:
    """A finished dump job: its result, its level and the token later levels name it by."""

    result: DumpResult
    level: int
    dump_date: str                           # the token a later BASE_DATE names this dump by
    base: Base
    snapshot_mode: str
    revert_date: Callable[[], None] = lambda: None   # the image did not reach its medium: forget it


def plan_base(request: DumpRequest, dates: DumpDates) -> Base:
    if request.base_token:
        return dates.base_from_token(request.key, request.base_token, max(request.level, 1))
    return dates.base_for(request.key, request.level)


def dump_volume(request: DumpRequest, out: int | Callable[[memoryview], None], history: HistoryCallback | None = None,
                progress: ProgressCallback | None = None, warn: Callable[[str], None] | None = None,
                cancel: threading.Event | None = None, meter: DumpMeter | None = None,
                note: Callable[[str], None] | None = None) -> DumpOutcome:
    """Dump ``request.source`` as a pax stream into ``out`` (a file descriptor, or a consumer
    of full buffers: see FdSink); raises on failure. ``meter`` follows the bytes as they go;
    ``note`` hears what the job does, for a log (the server's; without it the job imports no
    logging: ``ndmpd dump``'s start-up is most of a small incremental).

    With ``request.update`` the dump date is recorded once the stream is written; a caller
    that then learns the image never reached its medium calls ``outcome.revert_date()``, so
    no later incremental builds on it."""
    if not request.source.is_dir():
        raise NotADirectoryError(f"{request.source} is not a directory")
    dates = DumpDates(request.state_dir)
    base = plan_base(request, dates)
    if request.level > 0 and base.since_ns is None and warn:
        warn(base.note)
    # a live fall-back is the volume's configuration, not this job's trouble: the server's log
    # says it (the DMA's job is not one "with warnings" for it); ndmpd dump prints it
    snapshotter = choose(request.snapshot, request.source, request.state_dir, request.key, note or warn)
    note = note or (lambda text: None)
    date_ns = time.time_ns()
    snapshot = snapshotter.take(request.source)
    note(f"dumping {request.key} (level {base.level}, {base.note}) from {snapshot.path}")
    lean = bool(request.hold and request.base_token) and base.since_ns is not None
    changed = None
    if lean and request.journal is not None and base.known_dirs is not None and not request.only:
        changed = request.journal.changed_since(base.since_ns)
        note(f"{request.key}: change journal " + ("cannot prove the changes since the base; walking"
                                                  if changed is None else f"lists {len(changed)} changed directories"))
    try:
        options = DumpOptions(
            since_ns=base.since_ns, known_dirs=base.known_dirs, known_stamps=base.known_stamps,
            excludes=request.excludes, only=request.only,
            live=snapshot.live, xattrs=request.xattrs, skip_root_names=frozenset({SNAPSHOT_DIR.encode()}),
            labels={"volume": request.key, "level": str(base.level), "date": make_token(date_ns),
                    "base": make_token(base.since_ns) if base.since_ns is not None else "",
                    "snapshot": snapshotter.mode},
            lean=lean, changed_dirs=frozenset(changed) if changed is not None else None,
            readahead="auto" if base.since_ns is None else "off")   # an incremental reads few files, and
                                               # without the read-ahead its walk skips the unchanged ones
        sink = FdSink(out)
        ok = False
        try:
            dumper = Dumper(snapshot.path, sink, options, history, progress, warn, cancel)
            if meter is not None:
                meter.attach(dumper)
            result = dumper.run()
            ok = True
            if result.read_ahead:
                note(f"{request.key}: the cache was cold; read-ahead asked for {result.read_ahead} files")
            if result.prefetched:
                note(f"{request.key}: large files were cold; {result.prefetched >> 20} MiB of them read ahead of their copy")
        finally:
            sink.close(drain=ok)
    finally:
        snapshot.remove()
    reverts: list[Callable[[], None]] = []
    if request.update:
        previous = dates.record(request.key, base.level, date_ns, result.dir_index, result.dir_stamps)
        reverts.append(lambda: dates.revert(request.key, base.level, date_ns, previous))
    if request.hold:
        dates.hold(request.key, request.hold, date_ns, result.dir_index, base.since_ns, result.dir_stamps)
        reverts.append(lambda: dates.unhold(request.key, request.hold, date_ns))

    def revert() -> None:
        for undo in reverts:
            undo()
    return DumpOutcome(result, base.level, make_token(date_ns), base, snapshotter.mode, revert)
