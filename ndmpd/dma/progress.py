"""How a job tells its user what is happening: progress, the servers' log lines, warnings, a summary.

Jobs call a :class:`Reporter` and never print: the command picks one with
:func:`choose_reporter` (a progress bar on a terminal, JSON lines with ``--json``, plain lines
otherwise), so a job is written once and a test can hand it a recorder.

- :class:`BarReporter` (a terminal): a tqdm bar on stderr with bytes, rate and the ETA from the
  server's estimate; log lines and warnings are written above it, the summary on stdout.
  **tqdm, not rich**: the bar is all we need, tqdm is one small pure-Python package with no
  dependencies of its own (rich brings pygments and markdown-it), imports in a few
  milliseconds, and redraws at most ``mininterval`` apart, so it costs the job nothing.
- :class:`PlainReporter` (a pipe or a file): nothing animated; server log lines and warnings
  on stderr, the summary line on stdout.
- :class:`JsonLinesReporter` (``--json``): one JSON object per line on stdout, each with a
  ``type``: ``progress``, ``log``, ``warning`` and, last, ``summary``.

Every reporter keeps ``warnings`` (the job's and the servers' warning/error log lines): the
command ends with exit 3 when a job that completed has any. ``interval`` is how often the
job's :class:`~ndmpd.dma.jobs.watch.ProgressWatcher` should poll for it (None: no polling).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Protocol, TextIO

WARNING_LEVELS = ("warning", "error")   # server log levels that make a completed job exit 3
TTY_INTERVAL = 0.5                      # seconds between polls behind a bar (≤ 1 s: it must look alive)
JSON_INTERVAL = 2.0                     # seconds between --json progress lines (scripts need fewer)


class Reporter(Protocol):
    """What a job reports through."""

    def progress(self, done: int, total: int | None) -> None:
        """Bytes done so far and the estimated total (None when the server gave no estimate)."""

    def log(self, host: str, level: str, text: str) -> None:
        """One LOG_MESSAGE from a server; level is normal, debug, error or warning."""

    def warning(self, text: str) -> None:
        """Something the user must know that does not fail the job (it ends with exit 3)."""

    def summary(self, fields: dict[str, Any]) -> None:
        """The job's end: id, status, bytes, files, media..."""

    def close(self) -> None:
        """The job is over (a bar is cleared)."""


class NullReporter:
    """Reports nothing; keeps the warnings so the command can still choose exit 3."""

    interval: float | None = None

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def progress(self, done: int, total: int | None) -> None:
        pass

    def log(self, host: str, level: str, text: str) -> None:
        _count_warning(self, level, host, text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def summary(self, fields: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class _Rate:
    """Bytes per second and the ETA, from the first and the latest progress call."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def figures(self, done: int, total: int | None) -> tuple[float, float, float | None]:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if total is not None and rate > 0 else None
        return elapsed, rate, eta


def _count_warning(reporter: Any, level: str, host: str, text: str) -> None:
    if level in WARNING_LEVELS:
        reporter.warnings.append(f"{host}: {text}")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (what the human summary line shows)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def summary_line(fields: dict[str, Any]) -> str:
    """The one line a human reads at the end: ``backup ID done: 12.0 MiB, 34 files in 1.2 s, 2 warnings``
    (a restore: ``restore ID done: 65536 bytes read of an 81920-byte image (direct access) into
    /export/out``; the bytes read count whole tape records, so a small image reads more than its size)."""
    head = " ".join(str(fields[k]) for k in ("job", "id", "status") if fields.get(k) is not None)
    parts = []
    if fields.get("bytes") is not None:
        parts.append(human_bytes(fields["bytes"]) + (f" ({fields['bytes']} bytes)" if fields["bytes"] >= 1024 else ""))
    if fields.get("entries") is not None:
        parts.append(f"{fields['entries']} files")
    if fields.get("image_bytes") is not None:            # a restore: how much of the image it read, and where to
        how = " (direct access)" if fields.get("direct") else ""
        read = f" from {', '.join(fields['cartridges'])}" if fields.get("cartridges") else ""
        parts.append(f"{fields.get('bytes_moved', 0)} bytes read{read} of a {fields['image_bytes']}-byte image{how} "
                     f"into {fields.get('destination', '?')}")
    cartridges = [m for m in fields.get("media") or () if m.get("barcode")]
    if cartridges:
        parts.append(", ".join(f"{m['barcode']} (slot {m['slot']}, file {m['file_number']}, "
                               f"bytes {m['first_byte']}-{m['last_byte']})" for m in cartridges))
    elif fields.get("drive"):
        parts.append(f"{fields['drive']}" + (f" file {fields['file_number']}" if fields.get("file_number") is not None
                                             else ""))
    text = head + (": " + ", ".join(parts) if parts else "")
    if fields.get("seconds") is not None:
        text += f" in {fields['seconds']:.1f} s"
    stuck = {side: state for side, state in (fields.get("states") or {}).items() if state not in ("idle", "closed")}
    if stuck:                                            # jobs/states.py: a server the stop left busy
        text += ", not idle: " + ", ".join(f"{side} {state}" for side, state in stuck.items())
    warnings = len(fields.get("warnings") or ())
    if warnings:
        text += f", {warnings} warning{'s' if warnings > 1 else ''}"
    return text


class PlainReporter:
    """Off a terminal: no progress; the servers' normal and debug log lines and the summary on
    stdout (what happened), their warnings and errors and the DMA's own on stderr (what went
    wrong), so a failed job's stderr is its one line.

    A server's error lines are held to the end: when the job fails, the command's one line
    says why (the job puts the server's last error in its reason), so they are not shown
    twice; when it completes they are shown with the summary (and it ends with exit 3).
    """

    interval: float | None = None

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.warnings: list[str] = []
        self._errors: list[str] = []

    def progress(self, done: int, total: int | None) -> None:
        pass

    def log(self, host: str, level: str, text: str) -> None:
        _count_warning(self, level, host, text)
        line = f"ndmp: {host} {level}: {text}"
        if level == "error":
            self._errors.append(line)
        elif level in ("normal", "debug"):
            self._line(line, self.out)
        else:
            self._line(line)

    def warning(self, text: str) -> None:
        self.warnings.append(text)
        self._line(f"ndmp: warning: {text}")

    def summary(self, fields: dict[str, Any]) -> None:
        """The line on stdout; a job that did not complete has none (the command's one line on
        stderr says why)."""
        errors, self._errors = self._errors, []
        if fields.get("status", "done") == "done":
            for line in errors:
                self._line(line)
            print(summary_line(fields), file=self.out, flush=True)

    def close(self) -> None:
        pass

    def _line(self, text: str, stream: TextIO | None = None) -> None:
        print(text, file=stream or self.err, flush=True)


class BarReporter(PlainReporter):
    """On a terminal: a tqdm bar (bytes, rate, ETA) on stderr, lines written above it."""

    interval: float | None = TTY_INTERVAL

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, label: str = "") -> None:
        super().__init__(out, err)
        self.label = label
        self._bar: Any = None

    def progress(self, done: int, total: int | None) -> None:
        if self._bar is None:
            from tqdm import tqdm           # only a terminal needs it
            sized = _columns(self.err) > 0           # a terminal with no size (a bare pty): 80 columns
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=self.err,
                             desc=self.label or None, dynamic_ncols=sized, ncols=None if sized else 80,
                             nrows=None if sized else 24,
                             mininterval=0.2, leave=False)
        bar = self._bar
        if total is not None and total != bar.total:
            bar.total = max(total, done)
        bar.update(done - bar.n)

    def summary(self, fields: dict[str, Any]) -> None:
        self.close()
        super().summary(fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, text: str, stream: TextIO | None = None) -> None:
        if self._bar is None:
            super()._line(text, stream)
            return
        self._bar.write(text, file=stream or self.err)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


class JsonLinesReporter:
    """``--json``: one object a line on stdout (progress, log, warning, then the summary)."""

    interval: float | None = JSON_INTERVAL

    def __init__(self, out: TextIO | None = None, interval: float | None = None) -> None:
        self.out = out or sys.stdout
        self.warnings: list[str] = []
        self._rate = _Rate()
        if interval is not None:
            self.interval = interval

    def progress(self, done: int, total: int | None) -> None:
        elapsed, rate, eta = self._rate.figures(done, total)
        self._emit({"type": "progress", "bytes": done, "total": total, "elapsed": round(elapsed, 3),
                    "rate": round(rate), "eta": None if eta is None else round(eta, 1)})

    def log(self, host: str, level: str, text: str) -> None:
        _count_warning(self, level, host, text)
        self._emit({"type": "log", "host": host, "level": level, "text": text})

    def warning(self, text: str) -> None:
        self.warnings.append(text)
        self._emit({"type": "warning", "text": text})

    def summary(self, fields: dict[str, Any]) -> None:
        self._emit({"type": "summary", **fields})

    def close(self) -> None:
        pass

    def _emit(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()


def choose_reporter(as_json: bool, tty: bool, *, label: str = "", interval: float | None = None) -> Reporter:
    """--json: JSON lines; a terminal: the bar; otherwise plain lines. ``interval`` overrides
    how often progress is polled (the bar's and the JSON lines')."""
    if as_json:
        return JsonLinesReporter(interval=interval)
    if tty:
        bar = BarReporter(label=label)
        if interval is not None:
            bar.interval = min(interval, 1.0)
        return bar
    return PlainReporter()
