"""Running as a service: login slots, deadlines and the failed-login throttle (issue 15)."""

from __future__ import annotations

import asyncio
import logging
import struct
import time

import pytest

from ndmpd.context import ServerContext
from ndmpd.session import PRE_AUTH_MAX_RECORD
from tests.blocking_client import NdmpClient, NdmpReplyError
from ndmpd.guard import AuthThrottle, ConnectionGuard
from ndmpd.server import NdmpServer
from ndmpd.wire import C
from ndmpd.wire.records import RecordReader

from .helpers import make_config


async def start(tmp_path, **server):
    srv = NdmpServer(ServerContext(make_config(tmp_path, listen=["127.0.0.1:0"], **server)))
    bound = await srv.start()
    return srv, bound[0]


async def stop(srv: NdmpServer) -> None:
    srv.stop()
    await srv.serve_until_stopped()


async def greeting(host, port, source="127.0.0.2"):
    """Connect from ``source``; returns (reader, writer, greeting reason, greeting record)."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    records = RecordReader(1 << 20)
    while True:
        got = records.feed(await asyncio.wait_for(reader.read(65536), 10))
        if got:
            return reader, writer, struct.unpack_from(">i", got[0], 24)[0], got[0]


def login(host, port, password="secret", version=4):
    client = NdmpClient(host, port, version, timeout=30)
    client.login("ndmp", password, "text")
    return client


async def test_idle_unauthenticated_connections_leave_session_slots_to_dmas(tmp_path):
    srv, (host, port) = await start(tmp_path, max_sessions=2)
    idle = [await greeting(host, port, f"127.0.0.{n}") for n in range(2, 12)]
    assert all(reason == C.CONNECTED for _, _, reason, _ in idle)
    first = await asyncio.to_thread(login, host, port)
    second = await asyncio.to_thread(login, host, port)
    third = await greeting(host, port, "127.0.0.1")
    assert third[2] == C.REFUSED and b"server.max_sessions = 2" in third[3]
    for client in (first, second):
        await asyncio.to_thread(client.close)
    for _, writer, _, _ in idle + [third]:
        writer.close()
    await stop(srv)


async def test_logins_in_progress_are_capped_per_address(tmp_path):
    srv, (host, port) = await start(tmp_path, max_logins_per_address=3)
    held = [await greeting(host, port) for _ in range(3)]
    over = await greeting(host, port)
    assert over[2] == C.REFUSED and b"server.max_logins_per_address = 3" in over[3]
    client = await asyncio.to_thread(login, host, port)       # another address is not affected
    await asyncio.to_thread(client.close)
    for _, writer, _, _ in held + [over]:
        writer.close()
    await stop(srv)


async def test_a_full_login_pool_cuts_the_oldest_pending_connection(tmp_path):
    srv, (host, port) = await start(tmp_path, max_pending_logins=3)
    held = [await greeting(host, port, f"127.0.0.{n}") for n in (2, 3, 4)]
    newest = await greeting(host, port, "127.0.0.5")
    assert newest[2] == C.CONNECTED
    told = await asyncio.wait_for(held[0][0].read(), 5)          # SHUTDOWN post, then EOF
    assert b"server.max_pending_logins = 3" in told
    for _, writer, _, _ in held + [newest]:
        writer.close()
    await stop(srv)


async def test_a_trickling_unauthenticated_connection_is_cut_at_its_login_deadline(tmp_path):
    srv, (host, port) = await start(tmp_path, login_timeout=1)
    reader, writer, _, _ = await greeting(host, port)
    started = time.monotonic()
    closed_after = None
    for _ in range(40):                       # one byte of a record every 0.1 s (slowloris)
        writer.write(b"\x80")
        try:
            if await asyncio.wait_for(reader.read(65536), 0.1) == b"":
                closed_after = time.monotonic() - started
                break
        except asyncio.TimeoutError:
            continue
        except ConnectionError:
            closed_after = time.monotonic() - started
            break
    assert closed_after is not None and closed_after < 2.5
    writer.close()
    await stop(srv)


async def test_an_idle_session_is_cut_but_not_one_with_a_job(tmp_path):
    srv, (host, port) = await start(tmp_path, idle_timeout=1)
    idle = await asyncio.to_thread(login, host, port)
    busy = await asyncio.to_thread(login, host, port)
    await asyncio.to_thread(busy.call, "TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
    await asyncio.to_thread(busy.call, "MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
    await asyncio.sleep(2.5)
    with pytest.raises((ConnectionError, NdmpReplyError, OSError)):
        await asyncio.to_thread(idle.call, "CONFIG_GET_HOST_INFO")
    state = await asyncio.to_thread(busy.call, "MOVER_GET_STATE")     # still served
    assert state.state == C.MOVER_STATE_LISTEN
    await asyncio.to_thread(busy.call, "MOVER_ABORT")
    await asyncio.to_thread(busy.close)
    idle.sock.close()
    await stop(srv)


async def test_failed_logins_are_slowed_to_the_configured_rate_across_connections(tmp_path):
    srv, (host, port) = await start(tmp_path, auth_failure_rate=120, auth_failure_burst=2)   # 2 per second

    def guess(n: int) -> float:
        started, done = time.monotonic(), 0
        while done < n:
            client = NdmpClient(host, port, 4, timeout=30)
            for _ in range(min(2, n - done)):       # a new connection every two guesses
                with pytest.raises(NdmpReplyError):
                    client.login("ndmp", f"guess{done}", "text")
                done += 1
            client.sock.close()
        return time.monotonic() - started
    elapsed = await asyncio.to_thread(guess, 8)
    assert 2.7 <= elapsed < 6.0             # 2 free, then 6 at 2/s: about 3 s
    await stop(srv)


def test_throttle_reserves_one_token_per_attempt_and_success_refunds():
    now = [0.0]
    throttle = AuthThrottle(60, 2, clock=lambda: now[0])     # one per second after two
    address, user = ("address", "10.0.0.1"), ("user", "ndmp")
    assert throttle.reserve(address, user, 30).wait == 0 and throttle.reserve(address, user, 30).wait == 0
    assert throttle.reserve(address, user, 30).wait == pytest.approx(1)     # waits for the next token
    assert throttle.reserve(address, user, 30).wait == pytest.approx(2)     # parallel guesses queue up
    assert throttle.reserve(address, user, 1.5) is None                     # past the limit: refused, nothing taken
    failed_once = ("address", "10.0.0.2")
    throttle.reserve(failed_once, ("user", "other"), 30)                    # fails, its bucket is no longer full
    assert throttle.reserve(failed_once, user, 30).wait == pytest.approx(3)  # the user's bucket is shared
    now[0] = 100.0
    fresh = ("address", "10.0.0.3")
    for _ in range(10):                                       # a DMA that logs in right is never slowed
        attempt = throttle.reserve(fresh, ("user", "other"), 30)
        assert attempt.wait == 0
        throttle.refund(attempt)


def test_guessing_a_user_from_elsewhere_never_holds_up_a_clean_address():
    now = [0.0]
    throttle = AuthThrottle(60, 2, clock=lambda: now[0])
    user = ("user", "ndmp")
    for n in range(2, 40):                                    # one guess from each of many addresses
        throttle.reserve(("address", f"10.0.0.{n}"), user, 30)
    again = throttle.reserve(("address", "10.0.0.2"), user, 30)     # a guesser that failed: held by the user too
    assert again is not None and again.wait >= 1
    owner = throttle.reserve(("address", "10.0.1.1"), user, 0)      # the owner's first attempt: no wait
    assert owner is not None and owner.wait == 0


def test_failures_from_a_flood_of_addresses_cost_constant_time_each():
    """Every address that fails gets a bucket; a flood of new addresses (an IPv6 host has 2**64,
    loopback 2**24) must cost each attempt the same small time, not a scan of all the others."""
    throttle = AuthThrottle(10, 3, clock=lambda: 0.0)           # nothing refills meanwhile
    user = throttle.account("ndmp")
    started = time.monotonic()
    for n in range(40000):
        throttle.reserve(("address", f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}"), user, 30)
    assert time.monotonic() - started < 3.0
    own = ("address", "10.200.0.1")                              # one address's own count still holds
    for _ in range(3):
        throttle.reserve(own, throttle.account("x"), 30)
    assert throttle.reserve(own, throttle.account("y"), 0) is None


async def test_a_correct_login_is_not_locked_out_by_guessing_from_other_addresses(tmp_path, caplog):
    srv, (host, port) = await start(tmp_path, auth_failure_rate=6, auth_failure_burst=2, login_timeout=5)

    def guess(source: str, n: int) -> None:
        client = NdmpClient(host, port, 4, timeout=30, source=source)
        for i in range(n):
            with pytest.raises(NdmpReplyError):
                client.login("ndmp", f"guess{i}", "text")
        client.sock.close()

    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):     # the user's own bucket is drained
        await asyncio.to_thread(guess, source, 2)
    started = time.monotonic()
    client = await asyncio.to_thread(NdmpClient, host, port, 4, 30, "127.0.0.5")
    await asyncio.to_thread(client.login, "ndmp", "secret", "text")      # the owner, from a clean address
    assert time.monotonic() - started < 1.0
    await asyncio.to_thread(client.close)
    caplog.clear()
    await asyncio.to_thread(guess, "127.0.0.2", 1)                 # while the guessers stay throttled
    assert "too many failed logins" in caplog.text
    await stop(srv)


async def test_an_unauthenticated_peer_cannot_make_the_server_buffer_a_huge_message(tmp_path, caplog):
    srv, (host, port) = await start(tmp_path)
    reader, writer, _, _ = await greeting(host, port)
    writer.write(struct.pack(">I", 0x80000000 | (7 << 20)) + bytes(1 << 20))    # 1 MiB of a 7 MiB record
    await writer.drain()
    await asyncio.sleep(0.5)
    assert srv.ctx.sessions and all(s.buffered <= PRE_AUTH_MAX_RECORD for s in srv.ctx.sessions)
    client = await asyncio.to_thread(login, host, port)      # a DMA's login is unaffected
    await asyncio.to_thread(client.close)
    writer.close()
    await stop(srv)


async def test_a_throttled_login_does_not_hold_up_shutdown(tmp_path, caplog):
    srv, (host, port) = await start(tmp_path, auth_failure_rate=2, auth_failure_burst=1, login_timeout=60)
    client = await asyncio.to_thread(NdmpClient, host, port, 4, 30)
    with pytest.raises(NdmpReplyError):
        await asyncio.to_thread(client.login, "ndmp", "wrong", "text")
    guess = asyncio.ensure_future(asyncio.to_thread(client.login, "ndmp", "again", "text"))   # waits ~30 s
    await asyncio.sleep(0.5)
    assert not guess.done()
    started = time.monotonic()
    srv.stop()
    await srv.serve_until_stopped()
    assert time.monotonic() - started < 2 and srv.stuck == 0
    with pytest.raises((ConnectionError, NdmpReplyError, OSError)):
        await asyncio.wait_for(guess, 5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_deadlines_login_before_auth_idle_after_never_during_a_job(tmp_path):
    now = [100.0]
    settings = make_config(tmp_path, login_timeout=30, idle_timeout=600).server
    guard = ConnectionGuard(settings, clock=lambda: now[0])
    conn = object()
    assert guard.arrive(conn, "10.0.0.1").refusal is None
    now[0] = 129.0
    assert guard.deadline(conn, False, False, last_input=129.0) == (pytest.approx(1.0), None)
    now[0] = 130.5                                       # bytes kept coming: the login deadline holds
    delay, reason = guard.deadline(conn, False, False, last_input=130.4)
    assert reason == "no login within 30 s (server.login_timeout)"
    assert guard.authenticate(conn) is None
    assert guard.deadline(conn, True, False, last_input=130.0) == (pytest.approx(599.5), None)
    now[0] = 800.0
    assert guard.deadline(conn, True, True, last_input=130.0) == (1.0, None)       # a job runs: never cut
    delay, reason = guard.deadline(conn, True, False, last_input=130.0)
    assert reason == "idle for 670 s (server.idle_timeout = 600)"


def test_peers_are_counted_per_ipv4_address_and_per_ipv6_slash_64(tmp_path):
    guard = ConnectionGuard(make_config(tmp_path, max_logins_per_address=2).server)
    for n in (1, 2):
        assert guard.arrive(object(), f"2001:db8:1:2::{n}").refusal is None
    refused = guard.arrive(object(), "2001:db8:1:2:ffff::9").refusal      # same /64, another address
    assert refused and "2001:db8:1:2::/64" in refused and "server.max_logins_per_address = 2" in refused
    assert guard.arrive(object(), "2001:db8:1:3::1").refusal is None
    assert guard.arrive(object(), "::ffff:10.0.0.1").refusal is None
    assert guard.arrive(object(), "10.0.0.1").refusal is None           # the same IPv4 peer, twice now
    assert "from 10.0.0.1 " in guard.arrive(object(), "10.0.0.1").refusal


async def test_a_session_gets_its_whole_idle_timeout_after_its_job_ends(tmp_path):
    """A DMA that only listens while its job runs must not be cut the moment the job halts: its
    idle time starts when the job stops running, not at its last request before the job."""
    import socket

    from .test_mover_transfer import endpoint

    srv, (host, port) = await start(tmp_path, idle_timeout=2)
    connected = time.monotonic()                # the watchdog looks at t0 + 2 k (job running meanwhile)
    dma = await asyncio.to_thread(login, host, port)
    await asyncio.to_thread(dma.call, "TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
    reply = await asyncio.to_thread(dma.call, "MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
    await asyncio.sleep(connected + 5.7 - time.monotonic())     # silent through ticks at t0 + 2 and + 4
    data = socket.create_connection(endpoint(reply.connect_addr))
    data.close()                                # the data side ends: the mover halts, just before a tick
    await asyncio.to_thread(dma.wait_post, C.NOTIFY_MOVER_HALTED, 5)
    await asyncio.sleep(0.8)                    # the DMA takes a moment to react
    state = await asyncio.to_thread(dma.call, "MOVER_GET_STATE")
    assert state.state == C.MOVER_STATE_HALTED
    await asyncio.to_thread(dma.call, "MOVER_STOP")
    await asyncio.to_thread(dma.close)
    await stop(srv)


async def test_a_peer_that_never_reads_its_replies_loses_its_slot_when_cut(tmp_path, monkeypatch):
    """Pipelined requests whose replies are never read fill the output buffer; once the idle
    deadline cuts the session, its slot must be free again and a shutdown must not wait for it."""
    from ndmpd import server as server_module
    from ndmpd.wire.message import Header
    from ndmpd.wire.records import frame

    monkeypatch.setattr(server_module, "CLOSE_GRACE", 0.5, raising=False)
    srv, (host, port) = await start(tmp_path, idle_timeout=1, max_sessions=1)
    hog = await asyncio.to_thread(login, host, port)
    hog.sock.setblocking(False)
    requests = b"".join(frame(Header(n, 0, 0, C.CONFIG_GET_HOST_INFO, 0, 0).pack()) for n in range(1, 200001))
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < 3 and sent < len(requests):      # it sends, and never reads
        try:
            sent += hog.sock.send(requests[sent:sent + 65536])
        except BlockingIOError:
            await asyncio.sleep(0.01)
    for _ in range(60):                         # cut at its idle deadline, then its grace to flush
        if srv.guard.counts() == (0, 0):
            break
        await asyncio.sleep(0.1)
    dma = await asyncio.to_thread(login, host, port)     # the slot is free
    await asyncio.to_thread(dma.close)
    started = time.monotonic()
    await stop(srv)
    assert time.monotonic() - started < 3 and srv.stuck == 0
    hog.sock.close()


async def test_how_long_a_login_waits_does_not_tell_whether_the_user_exists(tmp_path):
    """From an address that has failed before, guessing at an unknown name waits no longer than
    at a configured one, however many other unknown names were tried meanwhile."""
    srv, (host, port) = await start(tmp_path, auth_failure_rate=6, auth_failure_burst=2, login_timeout=30)

    def attempt(source: str, user: str) -> float:
        client = NdmpClient(host, port, 4, timeout=30, source=source)
        started = time.monotonic()
        with pytest.raises(NdmpReplyError):
            client.login(user, "wrong", "text")
        client.sock.close()
        return time.monotonic() - started

    for n in range(4):                              # unknown names tried from elsewhere
        await asyncio.to_thread(attempt, f"127.0.0.{2 + n}", f"nobody{n}")
    for source in ("127.0.0.10", "127.0.0.11"):     # two addresses that failed once each
        await asyncio.to_thread(attempt, source, "someone")
    known = await asyncio.to_thread(attempt, "127.0.0.10", "ndmp")
    unknown = await asyncio.to_thread(attempt, "127.0.0.11", "nosuchuser")
    assert known < 1.0 and unknown < 1.0
    await stop(srv)


async def test_a_reload_that_shortens_the_timeouts_applies_to_connected_peers(tmp_path):
    srv, (host, port) = await start(tmp_path, idle_timeout=3600, login_timeout=600)
    srv.reload_config = lambda: make_config(tmp_path, listen=["127.0.0.1:0"], idle_timeout=1, login_timeout=1)
    idle = await asyncio.to_thread(login, host, port)
    reader, writer, _, _ = await greeting(host, port)           # never logs in
    assert srv.reload()
    await asyncio.sleep(2.5)
    with pytest.raises((ConnectionError, NdmpReplyError, OSError)):
        await asyncio.to_thread(idle.call, "CONFIG_GET_HOST_INFO")
    await asyncio.wait_for(reader.read(), 5)                     # the pending one was cut too (EOF)
    assert srv.guard.counts() == (0, 0)
    idle.sock.close()
    writer.close()
    await stop(srv)


async def test_an_authenticated_session_trickling_bytes_of_a_message_is_idle(tmp_path):
    """Bytes that never make a message are not activity: a session that logs in and then sends
    one byte at a time is cut at its idle deadline, its slot given back."""
    srv, (host, port) = await start(tmp_path, idle_timeout=1, max_sessions=1)
    client = await asyncio.to_thread(login, host, port)
    client.sock.settimeout(0.3)

    def trickle() -> bool:
        for _ in range(12):                      # one byte of a record header every 0.3 s
            try:
                client.sock.send(b"\x80")
                if client.sock.recv(65536) == b"":
                    return True
            except TimeoutError:
                continue
            except OSError:
                return True
        return False
    cut = await asyncio.to_thread(trickle)
    assert cut
    dma = await asyncio.to_thread(login, host, port)
    await asyncio.to_thread(dma.close)
    client.sock.close()
    await stop(srv)


async def test_a_burst_of_connections_never_holds_more_than_max_pending_logins(tmp_path):
    """Connections arriving together (one accept batch) each cut one older pending login, not
    all the same one: the pool stays within server.max_pending_logins at once."""
    import socket

    srv, (host, port) = await start(tmp_path, max_pending_logins=8)
    burst = []
    for n in range(60):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((f"127.0.0.{2 + n % 30}", 0))
        try:
            sock.connect((host, port))
        except BlockingIOError:
            pass
        burst.append(sock)
    await asyncio.sleep(1.0)
    assert srv.guard.counts()[0] <= 8

    def still_open() -> int:
        alive = 0
        for sock in burst:
            sock.settimeout(0.02)
            try:
                while sock.recv(65536):
                    pass
            except TimeoutError:
                alive += 1
            except OSError:
                pass
        return alive
    assert await asyncio.to_thread(still_open) <= 8
    for sock in burst:
        sock.close()
    await stop(srv)


def test_a_full_login_pool_cuts_a_silent_connection_before_a_login_under_way(tmp_path):
    now = [0.0]
    guard = ConnectionGuard(make_config(tmp_path, max_pending_logins=2).server, clock=lambda: now[0])
    dma, silent, newcomer = object(), object(), object()
    assert guard.arrive(dma, "10.0.0.1").refusal is None
    guard.spoke(dma)                                   # its CONNECT_OPEN arrived
    now[0] = 1.0
    assert guard.arrive(silent, "10.0.0.2").refusal is None
    now[0] = 2.0
    assert guard.arrive(newcomer, "10.0.0.3").evict == [silent]     # not the older DMA
