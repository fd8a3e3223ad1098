"""SIGHUP: the next configuration, as a new :class:`ServerContext` for new sessions.

Running sessions keep the context they started with (``session.ctx``), so their jobs see the
configuration they began under. What must be one thing across both — who holds which drive or
changer, the login/session counts and throttle — is shared, never copied.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from .config import Config, ConfigError
from .context import ServerContext

# settings a running server cannot change (its sockets are bound)
RESTART_ONLY = ("listen", "metrics_listen", "tls_listen")


@dataclasses.dataclass(frozen=True)
class Reloaded:
    """The outcome of one reload: the new context (None when refused) and what to log."""

    ctx: ServerContext | None
    error: str | None = None
    notes: tuple[str, ...] = ()


def reload_context(old: ServerContext, load: Callable[[], Config]) -> Reloaded:
    """Load the configuration again and build the context new sessions get; a bad file is
    refused with its one-line error and ``old`` stays in force."""
    try:
        config = load()
    except ConfigError as exc:
        return Reloaded(None, str(exc))
    notes = []
    for key in RESTART_ONLY:
        if getattr(config.server, key) != getattr(old.config.server, key):
            notes.append(f"server.{key} changed; it takes effect at the next restart")
            config = dataclasses.replace(config, server=dataclasses.replace(
                config.server, **{key: getattr(old.config.server, key)}))
    if config.server.tls_listen and config.server.tls_certificate is None:
        notes.append("server.tls_certificate removed while server.tls_listen is bound; keeping the old "
                     "certificate until the next restart")
        config = dataclasses.replace(config, server=dataclasses.replace(
            config.server, tls_certificate=old.config.server.tls_certificate, tls_key=old.config.server.tls_key))
    drives = old.drives.reconfigured(config.tapes)
    changers = old.changers.reconfigured(config.changers, drives)
    changers.start()
    watched = {v.name for v in config.volumes if v.journal and old.journals.get(v.name) is not None
               and Path(old.journals[v.name].root) == Path(os.path.realpath(v.path))}
    if watched != {v.name for v in config.volumes if v.journal}:
        notes.append("volume journal settings changed; they take effect at the next restart")
    ctx = ServerContext(config, handlers=old.handlers, butypes=old.butypes, identity=old.identity,
                        clock=old.clock, random_bytes=old.random_bytes, sessions=old.sessions,
                        drives=drives, changers=changers, guard=old.guard, metrics=old.metrics,
                        journals={name: old.journals[name] for name in watched})
    old.guard.reconfigure(config.server)          # last: nothing changes unless all of it is built
    return Reloaded(ctx, None, tuple(notes))


def summary(config: Config) -> str:
    """One line naming what the configuration serves (for the reload log line)."""
    return (f"{len(config.users)} users, {len(config.volumes)} volumes, {len(config.tapes)} tapes, "
            f"{len(config.changers)} changers")
