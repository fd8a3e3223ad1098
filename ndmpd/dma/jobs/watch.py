"""What a running job shows while it runs: its servers' log lines and its progress.

Two helpers any job (backup, restore, copy) starts with one line each:

- :class:`LogForwarder` hands every LOG_MESSAGE of its agents to the reporter with its level
  and host, and keeps the warning/error ones: a job that completes with any of them ends with
  exit 3. An NDMPv2 session's LOG_LOG has no level: its lines show as normal (v2 cannot
  tell a warning, so it cannot end with exit 3).
- :class:`ProgressWatcher` polls DATA_GET_STATE (bytes_processed, est_bytes_remain) and/or
  MOVER_GET_STATE (bytes_moved) every ``reporter.interval`` seconds and reports. It never
  slows the job: one poll at a time (the next waits for the previous reply), none at all when
  the reporter shows no progress, a short timeout of its own; a failing poll is skipped, never
  a job failure; :meth:`ProgressWatcher.stop` ends it cleanly before the job's closing steps.

Example (inside a job, ``reporter`` from :func:`ndmpd.dma.progress.choose_reporter`)::

    logs = LogForwarder(reporter, {"data-host": data, "tape-host": tape})
    watcher = ProgressWatcher(reporter, data=data, mover=tape).start()
    try:
        ...                                  # the job's requests and NOTIFY waits
    finally:
        await watcher.stop()
        logs.close()                         # logs.warnings: what makes it exit 3
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Callable

from ...wire import C, protocol
from ..agent import Agent
from ..errors import NdmpConnectionLost, NdmpReplyError
from ..progress import WARNING_LEVELS, Reporter

POLL_TIMEOUT = 10.0         # a poll waits no longer than this for its reply (then it is skipped)
_LEVELS = {C.LOG_NORMAL: "normal", C.LOG_DEBUG: "debug", C.LOG_ERROR: "error", C.LOG_WARNING: "warning"}


def log_level(log_type: int) -> str:
    """An NDMP log_type as the word the user sees (normal, debug, error, warning)."""
    return _LEVELS.get(log_type, "normal")


class LogForwarder:
    """The servers' LOG_MESSAGE lines to a reporter, with their level and host."""

    def __init__(self, reporter: Reporter, agents: dict[str, Agent]) -> None:
        self.reporter = reporter
        self.warnings: list[str] = []
        self.errors: list[str] = []          # the error-level texts alone (a failure's reason)
        self.error_logged = asyncio.Event()  # set at the first error line (a refusal waits for its reason)
        self._handlers: list[tuple[Agent, int, Any]] = []
        seen: set[int] = set()
        for host, agent in agents.items():
            if id(agent) in seen:            # two-way: one agent, its lines once
                continue
            seen.add(id(agent))
            handler = (lambda body, host=host: self._message(host, body.log_type, body.entry))
            agent.on(C.LOG_MESSAGE, handler)
            self._handlers.append((agent, C.LOG_MESSAGE, handler))
            if agent.version == 2:           # v2 logs text with no level: LOG_LOG is shown as normal
                v2 = protocol(2).by_name
                for code, handler in (
                        (v2["LOG_LOG"].code, lambda body, host=host: self._message(host, C.LOG_NORMAL, body.entry)),
                        (v2["LOG_DEBUG"].code, lambda body, host=host: self._message(host, C.LOG_DEBUG, body.message))):
                    agent.on(code, handler)
                    self._handlers.append((agent, code, handler))

    def _message(self, host: str, log_type: int, text: str) -> None:
        level = log_level(log_type)
        if level in WARNING_LEVELS:
            self.warnings.append(f"{host}: {text}")
        if level == "error":
            self.errors.append(text)
            self.error_logged.set()
        self.reporter.log(host, level, text)

    def close(self) -> None:
        """No more lines (the handlers come off the agents)."""
        for agent, code, handler in self._handlers:
            agent.off(code, handler)
        self._handlers.clear()


class ProgressWatcher:
    """A task polling the servers' byte counts for the reporter while a job runs.

    A job that watches the counts itself (the recover's stall check) passes ``on_sample``: each
    poll then reads both sides and hands it ``(bytes_moved, bytes_processed, monotonic time)``,
    so the job and the reporter share one poll. ``total`` is the size shown when the data
    server gives no estimate (a restore knows its image's size); ``by_mover`` counts the
    mover's bytes_moved even with a data agent (a restore: what came off the tape, which a
    data server may count only at the end). A job may poll more often than its reporter
    shows progress (``interval`` below the reporter's): the reporter still gets a line no
    more often than its own interval asks, none when it asks for none."""

    def __init__(self, reporter: Reporter, *, data: Agent | None = None, mover: Agent | None = None,
                 interval: float | None = None, total: int | None = None,
                 on_sample: Callable[[int, int, float], None] | None = None, by_mover: bool = False) -> None:
        self.reporter, self.data, self.mover = reporter, data, mover
        self.interval = interval if interval is not None else getattr(reporter, "interval", None)
        self.total, self.on_sample, self.by_mover = total, on_sample, by_mover and mover is not None
        self.polls = self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last = 0
        self._report_every = getattr(reporter, "interval", None)
        self._reported_at: float | None = None

    def start(self) -> "ProgressWatcher":
        """Begin polling (nothing when the reporter wants no progress or there is no agent)."""
        if self.interval is not None and (self.data or self.mover) and self._task is None:
            self._task = asyncio.create_task(self._run(), name="ndmp-progress")
        return self

    async def stop(self) -> None:
        """End the polling; a poll in flight is cancelled (its reply, when it comes, is dropped).

        The flag as well as the cancel: Python 3.11's ``wait_for`` (under ``Agent.call``) can
        swallow a cancel that lands as its reply arrives, and the loop would poll on forever."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        assert self.interval is not None
        first = True
        while not self._stopping:
            if not first:                     # the first right away: the bar shows the estimate at once
                await asyncio.sleep(self.interval)
            first = False
            try:
                done, total = await self.poll()
            except (NdmpReplyError, TimeoutError):
                self.failures += 1
                continue
            except NdmpConnectionLost:
                return                        # the job sees it too, and says so
            if self._stopping:
                return
            self.polls += 1
            done = max(done, self._last)      # the bar never goes back
            self._last = done
            if total is not None:
                total = max(total, done)      # a mover's count includes the last record's padding
            now = time.monotonic()
            if self._report_every is None and self.on_sample is not None:
                continue                      # polled for the job alone: the reporter shows no progress
            if (self._reported_at is not None and self._report_every is not None
                    and now - self._reported_at < 0.95 * self._report_every):
                continue                      # the job polls more often than the reporter wants lines
            self._reported_at = now
            self.reporter.progress(done, total)

    async def poll(self) -> tuple[int, int | None]:
        """(bytes done, estimated total or None): the data server's count when there is one
        (it knows the estimate), else the mover's bytes_moved. With ``on_sample`` both sides
        are read and handed to it."""
        moved = processed = 0
        total = self.total
        if self.mover is not None and (self.data is None or self.on_sample is not None or self.by_mover):
            state = await self.mover.call("MOVER_GET_STATE", timeout=POLL_TIMEOUT)
            moved = int(state.bytes_moved)
        if self.data is not None and (not self.by_mover or self.on_sample is not None):
            state = await self.data.call("DATA_GET_STATE", timeout=POLL_TIMEOUT)
            processed = int(state.bytes_processed)
            unknown = getattr(state, "unsupported", 0) & C.DATA_STATE_EST_BYTES_REMAIN_UNS
            if not unknown and state.state == C.DATA_STATE_ACTIVE and not self.by_mover:
                total = processed + int(state.est_bytes_remain)
        if self.on_sample is not None and not self._stopping:
            self.on_sample(moved, processed, time.monotonic())
        return (processed if self.data is not None and not self.by_mover else moved), total
