"""The asyncio DMA library against a real ndmpd: versions, auth, posts while requests are in
flight, concurrent calls, connection loss and several agents at once."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from ndmpd.config import build
from ndmpd.dma.agent import Agent
from ndmpd.dma.errors import NdmpAuthError, NdmpConnectError, NdmpConnectionLost, NdmpReplyError
from ndmpd.wire import C, T

from .server_thread import ServerThread

ALL = (1 << 64) - 1


def config(tmp_path, auth=("md5", "text"), name="a", max_version=4):
    state = tmp_path / f"state-{name}"
    state.mkdir(exist_ok=True)
    data = {
        "server": {"listen": ["127.0.0.1:0"], "state_dir": str(state), "auth": list(auth),
                   "max_version": max_version},
        "user": [{"name": "ndmp", "password": "secret"}],
        "tape": [{"name": "vtape0", "path": str(tmp_path / f"{name}-c0.img"), "capacity": "1GiB"}],
    }
    return build(data, "<test>", tmp_path)


@pytest.fixture
def server(tmp_path):
    s = ServerThread(config(tmp_path))
    yield s
    s.stop()


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def connect(server, **kw):
    kw.setdefault("user", "ndmp")
    kw.setdefault("password", "secret")
    kw.setdefault("timeout", 20)
    return Agent.connect(server.host, server.port, **kw)


@pytest.mark.parametrize("versions,expected", [((4, 3), 4), ((3,), 3), ((2,), 2)])
def test_negotiates_the_first_version_the_server_accepts(server, versions, expected):
    async def go():
        async with connect(server, versions=versions) as agent:
            info = await agent.call("CONFIG_GET_HOST_INFO")
            return agent.version, info.hostname
    version, hostname = run(go())
    assert version == expected and hostname


def test_falls_back_to_v3_when_the_server_refuses_v4(tmp_path):
    s = ServerThread(config(tmp_path, max_version=3))
    try:
        async def go():
            async with connect(s) as agent:
                return agent.version
        assert run(go()) == 3

        async def v2_only_when_asked():
            async with connect(s, versions=(4, 2)) as agent:
                return agent.version
        assert run(v2_only_when_asked()) == 2
        with pytest.raises(NdmpConnectError, match="no common NDMP version"):
            run(connect(s, versions=(4,)).__aenter__())
    finally:
        s.stop()


@pytest.mark.parametrize("auth,used", [(("md5", "text"), "md5"), (("text",), "text")])
def test_logs_in_with_md5_then_text(tmp_path, auth, used):
    s = ServerThread(config(tmp_path, auth=auth))
    try:
        async def go():
            async with connect(s) as agent:
                await agent.call("CONFIG_GET_FS_INFO")      # needs authentication
                return agent.auth
        assert run(go()) == used
    finally:
        s.stop()


def test_a_wrong_password_is_one_clear_error(server):
    with pytest.raises(NdmpAuthError, match="authentication failed for user 'ndmp'"):
        run(connect(server, password="wrong").__aenter__())


def test_a_refused_connection_is_one_clear_error():
    with pytest.raises(NdmpConnectError, match="cannot connect"):
        run(Agent.connect("127.0.0.1", 1, user="ndmp", password="x", timeout=5).__aenter__())


def test_reply_errors_carry_the_ndmp_error(server):
    async def go():
        async with connect(server) as agent:
            with pytest.raises(NdmpReplyError) as err:
                await agent.call("TAPE_OPEN", device="no-such-drive", mode=C.TAPE_READ_MODE)
            return err.value
    error = run(go())
    assert error.code in (C.NO_DEVICE_ERR, C.ILLEGAL_ARGS_ERR) and "TAPE_OPEN" in str(error)


def test_concurrent_calls_from_several_tasks_get_their_own_replies(server):
    async def go():
        async with connect(server) as agent:
            names = ["CONFIG_GET_HOST_INFO", "CONFIG_GET_SERVER_INFO", "CONFIG_GET_TAPE_INFO",
                     "MOVER_GET_STATE", "DATA_GET_STATE"] * 4
            replies = await asyncio.gather(*(agent.call(n) for n in names))
            return names, replies
    names, replies = run(go())
    for name, reply in zip(names, replies):
        expect = {"CONFIG_GET_HOST_INFO": "hostname", "CONFIG_GET_SERVER_INFO": "vendor_name",
                  "CONFIG_GET_TAPE_INFO": "tape_info", "MOVER_GET_STATE": "window_length",
                  "DATA_GET_STATE": "bytes_processed"}[name]
        assert hasattr(reply, expect), (name, reply)


async def _backup_over_tcp(agent: Agent, total: int) -> tuple[object, list]:
    """A mover backup of ``total`` bytes; the HALTED post arrives while MOVER_GET_STATE
    calls are in flight and goes to the registered handler."""
    seen: list = []
    halted = asyncio.get_running_loop().create_future()

    async def on_halted(body):
        seen.append(body.reason)
        state = await agent.call("MOVER_GET_STATE")        # a handler may call the agent
        if not halted.done():
            halted.set_result(state)
    agent.on(C.NOTIFY_MOVER_HALTED, on_halted)
    await agent.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
    await agent.call("MOVER_SET_RECORD_SIZE", len=64 << 10)
    await agent.call("MOVER_SET_WINDOW", offset=0, length=ALL)
    reply = await agent.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
    entry = reply.connect_addr.tcp_addr[0]
    _, writer = await asyncio.open_connection(str(ipaddress.IPv4Address(entry.ip_addr)), entry.port)
    writer.write(b"x" * total)
    await writer.drain()
    writer.close()
    polls = 0
    while not halted.done():
        await agent.call("MOVER_GET_STATE")
        polls += 1
        await asyncio.sleep(0.01)
    state = await halted
    await agent.call("MOVER_STOP")
    await agent.call("TAPE_CLOSE")
    return state, seen


def test_posts_are_dispatched_while_requests_are_in_flight(server):
    async def go():
        async with connect(server) as agent:
            return await _backup_over_tcp(agent, 3 << 20)
    state, seen = run(go())
    assert seen == [C.MOVER_HALT_CONNECT_CLOSED]
    assert state.bytes_moved == 3 << 20


def test_wait_post_takes_queued_posts_in_order(server):
    async def go():
        async with connect(server) as agent:
            await agent.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
            await agent.call("MOVER_SET_WINDOW", offset=0, length=ALL)
            await agent.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
            await agent.call("MOVER_ABORT")
            body = await agent.wait_post(C.NOTIFY_MOVER_HALTED, timeout=10)
            with pytest.raises(TimeoutError):
                await agent.wait_post(C.NOTIFY_DATA_HALTED, timeout=0.2)
            return body
    assert run(go()).reason == C.MOVER_HALT_ABORTED


def test_a_lost_connection_fails_every_pending_call(server):
    async def go():
        async with connect(server) as agent:
            waiting = asyncio.ensure_future(agent.wait_post(C.NOTIFY_DATA_HALTED, timeout=30))
            await asyncio.sleep(0.05)
            server.on_loop(lambda: server.only_session().edge.writer.transport.abort())
            with pytest.raises(NdmpConnectionLost):
                await waiting
            with pytest.raises(NdmpConnectionLost, match=agent.peer):
                await agent.call("CONFIG_GET_HOST_INFO")
    run(go())


def test_a_call_times_out_alone(server):
    async def go():
        async with connect(server) as agent:
            with pytest.raises(TimeoutError, match="CONFIG_GET_HOST_INFO"):
                await agent.call("CONFIG_GET_HOST_INFO", timeout=0)
            return (await agent.call("CONFIG_GET_HOST_INFO")).hostname      # the agent still works
    assert run(go())


def test_a_cancel_that_lands_as_the_reply_arrives_is_not_lost(server):
    """A job stopped by Ctrl-C cancels its task once; were the cancel swallowed because the
    reply came in the same loop turn (asyncio.wait_for on 3.11 does that), the job would go on
    for ever (``replicate run --every`` did)."""
    async def go():
        async with connect(server) as agent:
            for _ in range(3):
                task = asyncio.ensure_future(agent.call("CONFIG_GET_HOST_INFO"))
                await asyncio.sleep(0)                       # sent; its reply is awaited
                reply = agent._replies[agent.sequence]
                reply.add_done_callback(lambda _, task=task: task.cancel())
                with pytest.raises(asyncio.CancelledError):
                    await task
            return (await agent.call("CONFIG_GET_HOST_INFO")).hostname      # the agent still works
    assert run(go())


def test_two_agents_on_two_servers_at_once(tmp_path, server):
    other = ServerThread(config(tmp_path, name="b"))
    try:
        async def go():
            async with connect(server) as one, connect(other, versions=(3,)) as two:
                (s1, _), (s2, _) = await asyncio.gather(_backup_over_tcp(one, 1 << 20),
                                                        _backup_over_tcp(two, 2 << 20))
                return one.version, two.version, s1.bytes_moved, s2.bytes_moved
        assert run(go()) == (4, 3, 1 << 20, 2 << 20)
    finally:
        other.stop()


def test_without_login_only_pre_authentication_requests_work(server):
    async def go():
        async with connect(server, auth=()) as agent:
            info = await agent.call("CONFIG_GET_SERVER_INFO")
            with pytest.raises(NdmpReplyError) as err:
                await agent.call("CONFIG_GET_FS_INFO")
            return info.product_name, err.value.code
    assert run(go()) == ("ndmpd", C.NOT_AUTHORIZED_ERR)


def test_a_raw_handler_gets_the_record_undecoded_and_its_hold_never_delays_a_reply(server):
    """Agent.on_raw (how FH posts reach the catalog): the handler gets (version, code, record)
    from the read loop; the awaitable it returns holds further reading, but not while a
    request waits for its reply."""
    raw: list = []

    def on_raw(version, code, record):
        raw.append((version, code, len(record)))
        return asyncio.sleep(30)                     # a worker far behind

    async def go():
        async with connect(server) as agent:
            agent.on_raw(C.NOTIFY_MOVER_HALTED, on_raw)
            loop = asyncio.get_running_loop()
            start = loop.time()
            state, seen = await _backup_over_tcp(agent, 1 << 20)   # polls MOVER_GET_STATE, then STOP, CLOSE
            return state, seen, loop.time() - start
    state, seen, seconds = run(go())
    assert raw == [(4, C.NOTIFY_MOVER_HALTED, raw[0][2])] and raw[0][2] > 24    # header and body
    assert seen == [C.MOVER_HALT_CONNECT_CLOSED]         # the on() handler still got it decoded
    assert seconds < 10                                  # the calls after the post were not held


@pytest.mark.parametrize("env", [[T.pval(name="FILESYSTEM", value="/no/such/volume")], None],
                         ids=["bad env", "unknown butype"])
def test_a_refusal_says_why_before_its_reply(server, env):
    """The LOG_MESSAGE that explains a refused DATA_START is on the wire ahead of the error
    reply: a DMA holding the reply can tell the reason (a replication reading "no longer
    keeps the base" falls back to a full update); queued behind the reply, a loaded DMA
    could decide before the reason arrived."""
    with server.client(4) as client:
        client.call("DATA_LISTEN", addr_type=C.ADDR_LOCAL)
        with pytest.raises(NdmpReplyError):
            client.call("DATA_START_BACKUP", butype_name="tar" if env else "nosuch", env=env or [])
        said = [body.entry for code, body in client.posts if code == C.LOG_MESSAGE]
    assert said and ("/no/such/volume" in said[0] if env else "nosuch" in said[0]), said


def test_delivered_waits_for_the_handlers_of_posts_that_came_before_a_reply(server):
    """A handler still busy with a post (here: slow on purpose) has finished with it once
    ``delivered()`` returns, though the reply that came after it was seen first."""
    async def go():
        async with connect(server) as agent:
            said: list[str] = []

            async def slow(body) -> None:
                await asyncio.sleep(0.5)
                said.append(body.entry)
            agent.on(C.LOG_MESSAGE, slow)
            await agent.call("DATA_LISTEN", addr_type=C.ADDR_LOCAL)
            with pytest.raises(NdmpReplyError):
                await agent.call("DATA_START_BACKUP", butype_name="nosuch", env=[])
            await agent.delivered()
            return said
    said = run(go())
    assert len(said) == 1 and "nosuch" in said[0], said
