"""The DATA service's environment: what a DMA sends in DATA_START_*, checked and normalised.

Names are case-sensitive as NDMP defines them; values of yes/no variables accept y/yes/t/true/1
in any case. Variables we do not know are kept, in order, and handed back by DATA_GET_ENV.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Volume
from ..snapshots.holds import check_hold_name

YES = {"y", "yes", "t", "true", "1", "on"}
NO = {"n", "no", "f", "false", "0", "off", ""}
HIST_MODES = {"y", "n", "f", "d"}           # y: the butype's own kind; f: paths; d: directories + nodes
SNAPSHOT_MODES = ("auto", "btrfs", "lvm", "none")
HOLD_VAR = "NDMPD_HOLD"                     # keep this backup as a replica's next base, under this name
RELEASE_VAR = "NDMPD_RELEASE"               # y: forget that hold instead of backing up
KNOWN = {"FILESYSTEM", "TYPE", "LEVEL", "BASE_DATE", "DUMP_DATE", "UPDATE", "HIST", "DIRECT", "EXCLUDE",
         "FILES", "PREFIX", "RECURSIVE", "SNAPSHOT"}


class EnvError(ValueError):
    """An environment value the DMA must fix (answered with ILLEGAL_ARGS and a LOG_MESSAGE)."""


@dataclass
class JobEnv:
    """A DATA_START_* environment, checked."""

    pairs: list[tuple[str, str]]                 # everything as sent
    butype: str
    defaults: dict[str, str] = field(default_factory=dict)   # butype defaults neither DMA nor config set
    volume: Volume | None = None
    level: int = 0
    base_token: str | None = None
    update: bool = False
    hist: str = "n"                              # n, f (paths) or d (dirs + nodes)
    direct: bool = False
    excludes: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    prefix: str = ""
    recursive: bool = True
    snapshot: str | None = None
    hold: str | None = None                      # NDMPD_HOLD: a replication relationship's base keeper
    release: bool = False                        # NDMPD_RELEASE: drop the hold, send nothing

    def value(self, name: str, default: str | None = None) -> str | None:
        """The last value sent for ``name``, else the butype's default, else ``default``."""
        found = self.defaults.get(name, default)
        for key, value in self.pairs:
            if key == name:
                found = value
        return found

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]


def _flag(env: JobEnv, name: str, default: bool) -> bool:
    raw = env.value(name)
    if raw is None:
        return default
    text = raw.strip().lower()
    if text in YES:
        return True
    if text in NO:
        return False
    raise EnvError(f"{name}={raw!r}: expected y or n")


def find_volume(name: str, volumes: tuple[Volume, ...]) -> Volume | None:
    """The volume a DMA means by ``name``: its configured name or its path."""
    for volume in volumes:
        if name == volume.name:
            return volume
    wanted = name.rstrip("/") or "/"
    for volume in volumes:
        if wanted == str(volume.path).rstrip("/") or wanted == str(Path(volume.path).resolve()):
            return volume
    return None


def volume_list(volumes: tuple[Volume, ...]) -> str:
    return ", ".join(f"{v.name} ({v.path})" for v in volumes) or "none configured"


# Variables the configuration also sets, per volume: there a butype default must give way.
CONFIGURED: dict[str, Callable[[Volume], str]] = {"SNAPSHOT": lambda volume: volume.snapshot}


def fill_defaults(pairs: list[tuple[str, str]], defaults: tuple[tuple[str, str], ...],
                  volume: Volume | None) -> dict[str, str]:
    """The butype defaults that apply: only for what neither the DMA sent nor the volume's
    configuration says (the precedence is DMA, then configuration, then butype default)."""
    sent = {name for name, _ in pairs}
    filled: dict[str, str] = {}
    for name, value in defaults:
        if name in sent:
            continue
        if volume is not None and name in CONFIGURED:
            value = CONFIGURED[name](volume)
        filled[name] = value
    return filled


def parse(pairs: list[tuple[str, str]], butype: str, default_hist: str, volumes: tuple[Volume, ...],
          need_volume: bool, defaults: tuple[tuple[str, str], ...] = ()) -> JobEnv:
    """Check an environment; raises EnvError saying what is wrong and what would be right.

    ``defaults`` (the butype's) fill in only what the DMA did not send and the volume's
    configuration does not set."""
    env = JobEnv(pairs=list(pairs), butype=butype)
    fs = env.value("FILESYSTEM")
    if fs is not None:
        env.volume = find_volume(fs, volumes)
        if env.volume is None:
            raise EnvError(f"FILESYSTEM={fs!r} is not a configured volume; volumes: {volume_list(volumes)}")
    elif need_volume:
        raise EnvError(f"FILESYSTEM is required; volumes: {volume_list(volumes)}")
    env.defaults = fill_defaults(env.pairs, defaults, env.volume)
    level = env.value("LEVEL", "0") or "0"
    try:
        env.level = int(level)
    except ValueError:
        raise EnvError(f"LEVEL={level!r} is not a number") from None
    if env.level < 0:
        raise EnvError(f"LEVEL={level!r} must be 0 or more")
    base = env.value("BASE_DATE")
    if base not in (None, "", "0", "-1"):
        env.base_token = base
    env.update = _flag(env, "UPDATE", False)
    hist = (env.value("HIST", "n") or "n").strip().lower()
    if hist in YES:
        hist = "y"
    elif hist in NO:
        hist = "n"
    if hist not in HIST_MODES:
        raise EnvError(f"HIST={hist!r}: expected y, n, f or d")
    env.hist = default_hist if hist == "y" else hist
    env.direct = _flag(env, "DIRECT", False)
    env.recursive = _flag(env, "RECURSIVE", True)
    env.excludes = tuple(p.strip() for raw in env.values("EXCLUDE") for p in raw.split(",") if p.strip())
    env.files = tuple(f for raw in env.values("FILES") for f in raw.split(",") if f.strip())
    env.prefix = env.value("PREFIX", "") or ""
    snapshot = env.value("SNAPSHOT")
    if snapshot is not None:
        if snapshot.strip().lower() not in SNAPSHOT_MODES:
            raise EnvError(f"SNAPSHOT={snapshot!r}: expected one of {', '.join(SNAPSHOT_MODES)}")
        env.snapshot = snapshot.strip().lower()
    hold = env.value(HOLD_VAR)
    if hold is not None:
        try:
            env.hold = check_hold_name(hold)
        except ValueError as exc:
            raise EnvError(f"{HOLD_VAR}: {exc}") from None
    env.release = _flag(env, RELEASE_VAR, False)
    if env.release and env.hold is None:
        raise EnvError(f"{RELEASE_VAR}=y needs {HOLD_VAR}=NAME (the hold to release)")
    return env


def effective(env: JobEnv, **results: str) -> list[tuple[str, str]]:
    """What DATA_GET_ENV returns: the values the job really used, then the DMA's other variables."""
    out: list[tuple[str, str]] = []
    if env.volume is not None:
        out.append(("FILESYSTEM", env.value("FILESYSTEM") or env.volume.name))
    out.append(("TYPE", env.butype))
    out += [(name, value) for name, value in results.items() if value is not None]
    out.append(("HIST", env.hist))
    out.append(("DIRECT", "y" if env.direct else "n"))
    out += [("EXCLUDE", pattern) for pattern in env.excludes]
    if env.prefix:
        out.append(("PREFIX", env.prefix))
    named = {name for name, _ in out} | KNOWN
    seen = set()
    for key, value in env.pairs:
        if key not in named and (key, value) not in seen:
            seen.add((key, value))
            out.append((key, value))
    return out
