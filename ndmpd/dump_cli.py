"""``ndmpd dump`` and ``ndmpd restore``: the engine on its own, stream on stdout / stdin."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from .config import SNAPSHOT_MODES, Config, default_state_dir, load
from .engine.history import HistoryEntry
from .engine.job import DumpRequest, dump_volume
from .snapshots import SnapshotError

RESTORE_POLICIES = ("overwrite", "keep", "newer")   # engine.restore.POLICIES, without importing the
                                                    # restore for a dump (a test keeps them equal)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    dump = sub.add_parser("dump", help="write a volume or directory as a pax (tar) stream to stdout")
    dump.add_argument("source", help="a directory, or the name of a configured volume")
    dump.add_argument("--config", type=Path, help="configuration file (volumes, state_dir)")
    dump.add_argument("--level", type=int, default=0, help="0 = full; N = changes since the last lower level")
    dump.add_argument("--base-date", help="token-based incremental: changes since this DUMP_DATE token")
    dump.add_argument("--update", action="store_true", help="record this dump's date for later levels")
    dump.add_argument("--snapshot", choices=SNAPSHOT_MODES, help="override the volume's snapshot mode")
    dump.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                      help="leave out names or paths matching this shell pattern (repeatable)")
    dump.add_argument("--history", type=Path, metavar="FILE",
                      help="write one line per entry: offset, inode, parent, mode, size, mtime, path")
    dump.add_argument("--no-xattrs", action="store_true", help="do not archive extended attributes")
    restore = sub.add_parser("restore", help="extract a pax (tar) stream from stdin into a directory")
    restore.add_argument("target", type=Path, help="directory to restore into")
    restore.add_argument("--select", action="append", default=[], metavar="PATH[=NEW]",
                         help="restore only PATH (a file or directory), optionally as NEW (repeatable)")
    restore.add_argument("--offset", type=int, default=0,
                         help="start at this stream offset (from file history); stops when the picks are done")
    restore.add_argument("--existing", choices=RESTORE_POLICIES, default="overwrite",
                         help="what to do with files already there (default: overwrite)")
    restore.add_argument("--incremental", action=argparse.BooleanOptionalAction, default=None,
                         help="replay deletions and renames recorded in directory lists, of what earlier "
                              "restores of the same image directories put there only (default: when the "
                              "stream is an incremental)")
    restore.add_argument("--no-xattrs", action="store_true", help="do not restore extended attributes")
    restore.add_argument("--workers", type=_workers, default=2, metavar="N",
                         help="writer processes creating the regular files while the stream is parsed "
                              "(default 2; 0: write every file inline)")


def _workers(text: str) -> int:
    """``--workers``: 0 to 64 writer processes."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= count <= 64:
        raise argparse.ArgumentTypeError(f"{count} writers: give 0 to 64")
    return count


class Progress:
    """Bytes, entries and rate on one updating stderr line, only when stderr is a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.start = time.monotonic()
        self.shown = 0.0

    def __call__(self, done: int, entries: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.shown < 0.5:
            return
        self.shown = now
        rate = done / max(now - self.start, 1e-6)
        self.stream.write(f"\r{_size(done)}, {entries} entries, {_size(rate)}/s   ")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\n")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return ""


def escape_path(path: bytes) -> str:
    """A path on one line: backslash, control and non-UTF-8 bytes as \\ooo (as GNU tar quotes)."""
    out = []
    for char in path.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\{code - 0xDC00:03o}")
        elif char == "\\" or code < 0x20 or code == 0x7F:
            out.append(f"\\{code:03o}")
        else:
            out.append(char)
    return "".join(out)


def history_line(entry: HistoryEntry) -> str:
    st = entry.stat
    return (f"{entry.offset}\t{st.st_ino}\t{entry.parent_ino}\t{st.st_mode:o}\t{st.st_size}\t"
            f"{st.st_mtime_ns}\t{escape_path(entry.path) or '.'}\n")


def _resolve_source(args: argparse.Namespace) -> tuple[Path, str, str, Path]:
    """(directory, dump-dates key, snapshot mode, state dir) for the SOURCE argument."""
    config: Config | None = load(args.config) if args.config else None
    state_dir = config.server.state_dir if config else default_state_dir()
    if config:
        for volume in config.volumes:
            if volume.name == args.source:
                return volume.path, volume.name, args.snapshot or volume.snapshot, state_dir
    path = Path(args.source)
    if not path.is_dir():
        known = ", ".join(v.name for v in config.volumes) if config else "none (no --config)"
        raise SystemExit(f"ndmpd dump: {args.source} is neither a directory nor a configured volume "
                         f"(volumes: {known})")
    return path, str(path.resolve()), args.snapshot or "auto", state_dir


def _log_to_stderr(command: str) -> None:
    """The restore's log lines on stderr (a dump's warnings go to its warn callback, and it
    starts without logging: start-up is most of a small incremental)."""
    import logging
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format=f"ndmpd {command}: %(message)s")


def dump(args: argparse.Namespace) -> int:
    if args.level < 0:
        print("ndmpd dump: --level must be 0 or more", file=sys.stderr)
        return 2
    source, key, mode, state_dir = _resolve_source(args)
    if sys.stdout.isatty():
        print("ndmpd dump: refusing to write a stream to a terminal; redirect stdout", file=sys.stderr)
        return 2
    progress = Progress()
    history_file = open(args.history, "w", encoding="utf-8") if args.history else None
    request = DumpRequest(source=source, key=key, state_dir=state_dir, level=args.level,
                          base_token=args.base_date, update=args.update, snapshot=mode,
                          excludes=tuple(args.exclude), xattrs=not args.no_xattrs)
    try:
        outcome = dump_volume(request, sys.stdout.fileno(),
                              history=(lambda e: history_file.write(history_line(e))) if history_file else None,
                              progress=progress, warn=lambda m: print(f"ndmpd dump: {m}", file=sys.stderr))
    except (OSError, SnapshotError) as exc:
        progress.finish()
        print(f"ndmpd dump: failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if history_file:
            history_file.close()
    progress.finish()
    result = outcome.result
    if progress.enabled:
        print(f"ndmpd dump: {_size(result.bytes_written)}, {result.entries} entries, level {outcome.level}, "
              f"snapshot {outcome.snapshot_mode}", file=sys.stderr)
    print(f"DUMP_DATE={outcome.dump_date}", file=sys.stderr)
    return 1 if result.changed else 0


def restore(args: argparse.Namespace) -> int:
    from .engine.reader import StreamError          # here: a dump starts without the restore's modules
    from .engine.restore import RestoreOptions, Restorer
    from .engine.select import Pick
    _log_to_stderr("restore")
    progress = Progress()
    options = RestoreOptions(picks=tuple(Pick.parse(p) for p in args.select), existing=args.existing,
                             incremental=args.incremental, xattrs=not args.no_xattrs,
                             stop_when_done=bool(args.offset and args.select), workers=args.workers)
    try:
        result = Restorer(args.target, sys.stdin.fileno(), options,
                          report=lambda m: print(f"ndmpd restore: {m}", file=sys.stderr),
                          progress=progress).run(args.offset)
    except (OSError, StreamError) as exc:       # the target cannot be opened, or stdin fails
        progress.finish()
        print(f"ndmpd restore: failed: {exc}", file=sys.stderr)
        return 2
    progress.finish()
    if progress.enabled:
        print(f"ndmpd restore: {result.entries} entries, {_size(result.bytes_read)} read", file=sys.stderr)
    missing = {p.source for p in options.picks} - set(result.restored)
    for path in sorted(missing):
        print(f"ndmpd restore: {os.fsdecode(path)}: not found in the stream", file=sys.stderr)
    return 1 if result.refused_count or missing or not result.complete else 0
