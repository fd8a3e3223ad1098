"""What every session of one server shares: configuration, handlers, host facts, clock."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import __version__
from .config import Config
from .changer.registry import ChangerRegistry
from .devices.registry import DriveRegistry
from .guard import ConnectionGuard
from .host import HostIdentity, host_identity
from .metrics import Metrics
from .services import HandlerTable, all_handlers

VENDOR = "ndmpd project"
PRODUCT = "ndmpd"


@dataclass(frozen=True)
class Butype:
    """One backup type the data service offers (CONFIG_GET_BUTYPE_INFO)."""

    name: str
    default_env: tuple[tuple[str, str], ...]
    attrs: int                 # v3/v4 attribute bits
    v2_attrs: int              # v2 negative-sense bits


def data_butypes() -> tuple[Butype, ...]:
    """The formats the data service offers (imported late: the service imports this module)."""
    from .services.data import BUTYPES
    return BUTYPES


@dataclass
class ServerContext:
    """Shared, explicitly passed server state (there are no globals)."""

    config: Config
    handlers: HandlerTable = field(default_factory=all_handlers)
    butypes: tuple[Butype, ...] = field(default_factory=data_butypes)
    identity: HostIdentity = field(default_factory=host_identity)
    clock: Callable[[], float] = time.time
    random_bytes: Callable[[int], bytes] = os.urandom
    vendor: str = VENDOR
    product: str = PRODUCT
    revision: str = __version__
    sessions: set[Any] = field(default_factory=set)
    drives: DriveRegistry | None = None     # built from config.tapes unless given
    changers: ChangerRegistry | None = None   # built from config.changers unless given
    metrics: Metrics = field(default_factory=Metrics)   # this server's own registry; kept across reloads
    guard: ConnectionGuard | None = None      # login/session slots and throttling; kept across reloads
    journals: dict[str, Any] = field(default_factory=dict)   # volume name -> its ChangeJournal (serve)

    def __post_init__(self) -> None:
        self.metrics.watch(self)
        if self.drives is None:
            self.drives = DriveRegistry(self.config.tapes)
        if self.changers is None:
            self.changers = ChangerRegistry(self.config.changers, self.drives)
            self.changers.start()
        if self.guard is None:
            self.guard = ConnectionGuard(self.config.server)
