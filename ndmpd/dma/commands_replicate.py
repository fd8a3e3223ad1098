"""``ndmp replicate create|run|status|promote|delete``: the CLI side of replication (arguments,
the catalog record, the lock, output and exit codes; one update is :mod:`.jobs.replicate`).

``run --every 2s`` runs each replica in a task of its own: an offline replica (short connect
timeout, retried at the cadence) never delays the others. A run holds the replication's lock
(:mod:`.replication_lock`), so ``promote`` and ``delete`` refuse while it is active.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

from .agent import Agent
from .catalog import Catalog, CatalogError, default_path, open_catalog
from .catalog_replication import Replica, Replication, check_name
from .errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_WARNINGS, NdmpConnectError, NdmpConnectionLost,
                     NdmpReplyError, UsageError)
from .hosts import host_named
from .tls_data import secure_data_connection
from .job_cli import add_version_argument, connect
from .jobs.replicate import (ReplicaUpdateJob, UpdateFailed, UpdateRequest, UpdateResult, butype_for,
                             release_hold, volume_env, volume_fs)
from .progress import JsonLinesReporter, PlainReporter, Reporter, human_bytes
from .replication_lock import ReplicationBusy, is_locked, replication_lock

CONNECT_TIMEOUT = 5.0               # seconds to reach a server: an offline replica fails fast
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``2s``, ``500ms``, ``1.5m``, ``1h`` or plain seconds, more than 0 (UsageError otherwise)."""
    match = _DURATION.match(text.lower())
    seconds = float(match.group(1)) * _UNITS[match.group(2)] if match else 0.0
    if seconds <= 0:
        raise UsageError(f"{text!r}: expected a duration above 0 such as 2s, 500ms, 5m or 1h")
    return seconds


def _duration_arg(text: str) -> float:
    """parse_duration for argparse (its usage error: status 2, one line)."""
    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_target(text: str) -> tuple[str, str]:
    """``HOST:VOLUME`` split at the LAST ':' (a volume name has none; HOST may carry a port or
    be an IPv6 address in brackets)."""
    host, colon, volume = text.rpartition(":")
    if not colon or not host or not volume or host.endswith("@"):
        raise UsageError(f"{text!r}: expected HOST:VOLUME")
    return host, volume


def add_parsers(sub: Any, epilog: str) -> None:
    """The ``replicate`` subparser and its five commands."""
    r = sub.add_parser("replicate", help="keep read-only replicas of a volume current, data to data",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = r.add_subparsers(dest="replicate_command", required=True, metavar="ACTION",
                            parser_class=type(r))

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--catalog", metavar="FILE", help="catalog database (default ~/.local/share/ndmp/catalog.db)")
        return p

    c = action("create", "a replication: one master volume, one or more replica volumes")
    c.add_argument("name", metavar="NAME")
    c.add_argument("master", metavar="SRC:VOLUME")
    c.add_argument("replicas", metavar="DST:VOLUME", nargs="+")
    c.add_argument("--json", action="store_true", help="the replication as one JSON object")
    add_version_argument(c)
    run = action("run", "update the replicas: once, or every DURATION until interrupted")
    run.add_argument("name", metavar="NAME")
    when = run.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=_duration_arg, metavar="DURATION", help="an update per replica every DURATION (2s)")
    when.add_argument("--once", action="store_true", help="one update of each replica, then exit")
    run.add_argument("--thaw", action="store_true",
                     help="make the master writable again (after a promote that failed)")
    run.add_argument("--update-timeout", type=_duration_arg, default=600.0, metavar="DURATION",
                     help="abort an update running longer (default 10m)")
    run.add_argument("--json", action="store_true", help="JSON lines: one per update, log and warning lines")
    add_version_argument(run)
    s = action("status", "each replica's state, lag, last update and errors")
    s.add_argument("name", metavar="NAME", nargs="?")
    s.add_argument("--json", action="store_true", help="one JSON document")
    p = action("promote", "cut over: a last update with the master frozen, the replica made read-write")
    p.add_argument("name", metavar="NAME")
    p.add_argument("replica", metavar="DST:VOLUME")
    p.add_argument("--reverse", action="store_true", help="then replicate back: DST the master, the old master its replica")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")
    add_version_argument(p)
    d = action("delete", "forget a replication and release the master's snapshots (replica data stays)")
    d.add_argument("name", metavar="NAME")
    d.add_argument("--json", action="store_true", help="the result as one JSON object")
    add_version_argument(d)


def _catalog_path(args: argparse.Namespace) -> Path:
    return Path(args.catalog) if args.catalog else default_path()


async def _connect(text: str, args: argparse.Namespace) -> Agent:
    """An agent to the server ``text`` names, the connection bounded by CONNECT_TIMEOUT."""
    host = host_named(text, args.config)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await connect(host, args)
    except TimeoutError:
        raise NdmpConnectError(f"{host.display}: no answer within {CONNECT_TIMEOUT:g} s") from None
    except OSError as exc:
        if isinstance(exc, (NdmpConnectError, NdmpConnectionLost)):
            raise
        raise NdmpConnectError(f"{host.display}: {exc.strerror or exc}") from None


def _print_json(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


def replica_dict(r: Replica, now: float) -> dict[str, Any]:
    """One replica for ``--json`` (lag: seconds behind the master, None before a first update)."""
    lag = r.lag(now)
    return {"replica": r.target, "host": r.host, "volume": r.volume, "hold": r.hold, "state_id": r.state_id,
            "state_time": r.state_time, "lag": None if lag is None else round(lag, 3),
            "last_start": r.last_start, "last_end": r.last_end, "last_bytes": r.last_bytes,
            "last_seconds": r.last_seconds, "last_error": r.last_error, "updates": r.updates,
            "failures": r.failures}


def replication_dict(rep: Replication, now: float, running: bool | None = None) -> dict[str, Any]:
    out = {"name": rep.name, "master": rep.master, "master_id": rep.master_id, "butype": rep.butype,
           "state": rep.state, "created": rep.created,
           "replicas": [replica_dict(r, now) for r in rep.replicas]}
    if running is not None:
        out["running"] = running
    return out


# ---------------------------------------------------------------- create

async def create(args: argparse.Namespace) -> int:
    try:
        check_name(args.name)
    except CatalogError as exc:
        raise UsageError(str(exc)) from None
    m_text, m_volume = parse_target(args.master)
    master_host = host_named(m_text, args.config).name
    replicas = []
    for text in args.replicas:
        host, volume = parse_target(text)
        replicas.append((host_named(host, args.config).name, volume))
    catalog = open_catalog(args.catalog)
    try:
        async with AsyncExitStack() as stack:
            master = await _connect(m_text, args)
            stack.push_async_callback(master.close)
            env, fs_type = await volume_fs(master, m_volume, master_host)
        volume_id = env.get("NDMPD_VOLUME_ID")
        if not volume_id:
            raise CatalogError(f"{master_host} reports no NDMPD_VOLUME_ID for {m_volume}: not an ndmpd "
                               "that can replicate")
        if env.get("NDMPD_REPLICA") == "y" and env.get("NDMPD_REPLICA_OF") and \
                env.get("NDMPD_REPLICA_ROLE", "replica") == "replica":
            raise CatalogError(f"{master_host}:{m_volume} is a replica of {env['NDMPD_REPLICA_OF']}: "
                               "it cannot be a master (promote it first)")
        rep = catalog.create_replication(args.name, master_host=master_host, master_volume=m_volume,
                                         master_id=volume_id, butype=butype_for(env, fs_type), replicas=replicas)
    finally:
        catalog.close()
    if args.json:
        _print_json(replication_dict(rep, time.time()))
    else:
        print(f"replication {rep.name} created: {rep.master} ({rep.butype}) -> "
              f"{', '.join(r.target for r in rep.replicas)}; next: ndmp replicate run {rep.name} --once")
    return EXIT_OK


# ---------------------------------------------------------------- one update

async def update_one(catalog: Catalog, rep: Replication, replica: Replica, args: argparse.Namespace,
                     reporter: Reporter, **how: Any) -> UpdateResult:
    """Connect to the master and the replica and run one update (UpdateFailed: recorded)."""
    request = UpdateRequest(rep.name, rep.master_host, rep.master_volume, rep.master_id, replica.host,
                            replica.volume, replica.hold, butype=rep.butype, demote=replica.demote,
                            base_hint=replica.state_id,
                            timeout=getattr(args, "update_timeout", None) or 600.0, **how)
    started = time.time()
    async with AsyncExitStack() as stack:
        try:
            master = await _connect(rep.master_host, args)
            stack.push_async_callback(master.close)
            agent = await _connect(replica.host, args)
            stack.push_async_callback(agent.close)
            await secure_data_connection(master, agent)
        except (NdmpConnectError, NdmpConnectionLost, NdmpReplyError) as exc:
            catalog.record_replica_update(rep.name, replica.host, replica.volume, started=started,
                                          ended=time.time(), outcome="failed", base_id=replica.state_id,
                                          error=str(exc))
            raise UpdateFailed(str(exc)) from None
        return await ReplicaUpdateJob(master, agent, catalog, request, reporter).run()


def _report_update(args: argparse.Namespace, name: str, target: str, result: UpdateResult | None,
                   error: str | None) -> None:
    now = time.time()
    if args.json:
        line: dict[str, Any] = {"type": "update", "replication": name, "replica": target,
                                "status": "done" if result else "failed"}
        if result:
            line.update(state_id=result.state_id, base=result.base_id, full=result.full, bytes=result.bytes,
                        seconds=result.seconds,
                        lag=None if result.state_time is None else round(max(0.0, now - result.state_time), 3))
        else:
            line["error"] = error
        _print_json(line)
    elif result:
        how = "full" if result.full else f"incremental from {result.base_id}"
        lag = "" if result.state_time is None else f", lag {max(0.0, now - result.state_time):.1f} s"
        print(f"{name} {target}: done, {human_bytes(result.bytes)} in {result.seconds:.2f} s ({how}), "
              f"state {result.state_id}{lag}", flush=True)
    else:
        print(f"ndmp: {name} {target}: update failed: {error}", file=sys.stderr, flush=True)


def _reporter(args: argparse.Namespace) -> Reporter:
    return JsonLinesReporter() if args.json else PlainReporter()


# ---------------------------------------------------------------- run

async def _replica_loop(catalog: Catalog, name: str, replica: Replica, args: argparse.Namespace,
                        reporter: Reporter, stopping: asyncio.Event) -> bool:
    """Update one replica once, or every ``args.every`` until cancelled or ``stopping``; whether
    the last one succeeded. A failure is reported and retried at the cadence. The event, not
    only the cancel, ends the loop: one cancel lost inside a library call must not leave it
    running for ever."""
    thaw = args.thaw
    ok = False
    while True:
        began = time.monotonic()
        rep = catalog.replication(name)
        current = rep.replica(replica.target)
        try:
            result = await update_one(catalog, rep, current, args, reporter, thaw=thaw)
            _report_update(args, name, current.target, result, None)
            ok, thaw = True, False
        except UpdateFailed as exc:
            _report_update(args, name, current.target, None, str(exc))
            ok = False
        if args.once:
            return ok
        with suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, args.every - (time.monotonic() - began))):
                await stopping.wait()
        if stopping.is_set():
            return ok


async def run(args: argparse.Namespace) -> int:
    path = _catalog_path(args)
    catalog = open_catalog(path)
    try:
        rep = catalog.replication(args.name)
        if rep.state != "active":
            raise CatalogError(f"replication {rep.name} is {rep.state}: there is nothing to run")
        with replication_lock(path, rep.name, "run"):
            reporter = _reporter(args)
            stopping = asyncio.Event()
            tasks = [asyncio.create_task(_replica_loop(catalog, rep.name, r, args, reporter, stopping),
                                         name=f"replicate-{r.target}") for r in rep.replicas]
            interrupted: list[int] = []
            loop = asyncio.get_running_loop()

            def stop(sig: int) -> None:
                interrupted.append(sig)
                stopping.set()
                for task in tasks:
                    task.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop, sig)
            try:
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            if interrupted:
                print(f"ndmp: replicate run {rep.name} interrupted by signal "
                      f"{signal.Signals(interrupted[0]).name}: updates in flight aborted", file=sys.stderr)
                return EXIT_INTERRUPTED
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            failed = sum(1 for ok in outcomes if not ok)
            if args.json:
                reporter.summary({"job": "replicate", "replication": rep.name,
                                  "status": "failed" if failed else "done",
                                  "replicas": len(outcomes), "failed": failed})
            if failed:
                print(f"ndmp: replicate run {rep.name}: {failed} of {len(outcomes)} replicas not updated",
                      file=sys.stderr)
                return EXIT_FAILED
            return EXIT_WARNINGS if reporter.warnings else EXIT_OK
    except ReplicationBusy as exc:
        raise CatalogError(str(exc)) from None
    finally:
        catalog.close()


# ---------------------------------------------------------------- status

def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


async def status(args: argparse.Namespace) -> int:
    path = _catalog_path(args)
    with open_catalog(path) as catalog:
        reps = [catalog.replication(args.name)] if args.name else catalog.replications()
    now = time.time()
    if args.json:
        docs = [replication_dict(r, now, running=is_locked(path, r.name)) for r in reps]
        _print_json(docs[0] if args.name else docs)
        return EXIT_OK
    if not reps:
        print("no replications (ndmp replicate create NAME SRC:VOLUME DST:VOLUME)")
    for rep in reps:
        running = " (run active)" if is_locked(path, rep.name) else ""
        print(f"{rep.name}: {rep.master} ({rep.butype}, {rep.state}){running}")
        for r in rep.replicas:
            last = (f"{human_bytes(r.last_bytes)} in {r.last_seconds:.2f} s"
                    if r.last_bytes is not None and r.last_seconds is not None else "-")
            print(f"  {r.target}: state {r.state_id or '-'}, lag {_age(r.lag(now))}, last {last}, "
                  f"{r.updates} updates, {r.failures} failures" + (f"; error: {r.last_error}" if r.last_error else ""))
    return EXIT_OK


# ---------------------------------------------------------------- promote, delete

async def promote(args: argparse.Namespace) -> int:
    path = _catalog_path(args)
    host, volume = parse_target(args.replica)
    target = f"{host_named(host, args.config).name}:{volume}"
    catalog = open_catalog(path)
    try:
        with replication_lock(path, args.name, "promote"):
            rep = catalog.replication(args.name)
            if rep.state != "active":
                raise CatalogError(f"replication {rep.name} is {rep.state}: it cannot be promoted")
            replica = rep.replica(target)
            reporter = _reporter(args)
            try:
                result = await update_one(catalog, rep, replica, args, reporter, freeze=True, promote=True)
            except UpdateFailed as exc:
                print(f"ndmp: promote {rep.name}: the final update failed: {exc}; {rep.master} may be left "
                      f"read-only: ndmp replicate run {rep.name} --once --thaw makes it writable", file=sys.stderr)
                return EXIT_FAILED
            if args.reverse:
                async with AsyncExitStack() as stack:
                    agent = await _connect(replica.host, args)
                    stack.push_async_callback(agent.close)
                    new_id = (await volume_env(agent, replica.volume, replica.host)).get("NDMPD_VOLUME_ID")
                if not new_id:
                    raise CatalogError(f"{target} reports no NDMPD_VOLUME_ID after the promote")
                await _release(rep, [r for r in rep.replicas if r.target != target], args, reporter)
                rep = catalog.reverse_replication(rep.name, new_master_host=replica.host,
                                                  new_master_volume=replica.volume, new_master_id=new_id,
                                                  state_id=result.state_id, state_time=result.state_time)
            else:
                catalog.set_replication_state(rep.name, "promoted")
                rep = catalog.replication(rep.name)
    except ReplicationBusy as exc:
        raise CatalogError(str(exc)) from None
    finally:
        catalog.close()
    if args.json:
        _print_json({"type": "summary", "job": "promote", "status": "done", "replica": target,
                     "state_id": result.state_id, "bytes": result.bytes, "seconds": result.seconds,
                     "reverse": args.reverse, "replication": replication_dict(rep, time.time())})
    else:
        after = (f"; {rep.name} now replicates {rep.master} -> {rep.replicas[0].target}" if args.reverse
                 else "; the master is read-only")
        print(f"promote {rep.name} done: {target} is read-write at state {result.state_id}{after}")
    return EXIT_WARNINGS if reporter.warnings else EXIT_OK


async def _release(rep: Replication, replicas: list[Replica], args: argparse.Namespace, reporter: Reporter) -> None:
    """NDMPD_RELEASE of these replicas' holds on the master (its snapshots, or a dump master's
    directory indexes)."""
    if not replicas:
        return
    async with AsyncExitStack() as stack:
        master = await _connect(rep.master_host, args)
        stack.push_async_callback(master.close)
        for r in replicas:
            await release_hold(master, rep.master_volume, r.hold, rep.master_host, reporter, rep.butype)


async def delete(args: argparse.Namespace) -> int:
    path = _catalog_path(args)
    catalog = open_catalog(path)
    try:
        with replication_lock(path, args.name, "delete"):
            rep = catalog.replication(args.name)
            reporter = _reporter(args)
            try:
                await _release(rep, rep.replicas, args, reporter)
            except UpdateFailed as exc:
                raise CatalogError(f"delete {rep.name}: {exc}; nothing forgotten (run delete again)") from None
            catalog.set_replication_state(rep.name, "deleted")
    except ReplicationBusy as exc:
        raise CatalogError(str(exc)) from None
    finally:
        catalog.close()
    holds = [r.hold for r in rep.replicas]
    if args.json:
        _print_json({"type": "summary", "job": "delete", "status": "done", "replication": rep.name,
                     "released": holds})
    else:
        print(f"replication {rep.name} deleted" + (f"; released {', '.join(holds)} on {rep.master}" if holds else "")
              + "; the replicas keep their data, read-only")
    return EXIT_OK


_ACTIONS = {"create": create, "run": run, "status": status, "promote": promote, "delete": delete}


async def replicate(args: argparse.Namespace) -> int:
    return await _ACTIONS[args.replicate_command](args)


COMMANDS = {"replicate": replicate}
