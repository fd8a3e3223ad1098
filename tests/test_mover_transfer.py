"""The mover moving real bytes: TCP and LOCAL data connections into a virtual cartridge and
back, direct-access reads inside the window, SEEK pauses outside it, and tape spanning."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import socket
import threading
import time

import pytest

from ndmpd.config import build
from ndmpd.devices.cartridge import Cartridge
from ndmpd.devices.st_tape import LinuxTape
from tests.blocking_client import NdmpReplyError
from ndmpd.mover import pump
from ndmpd.wire import C

from .fake_st import FakeStKernel
from .server_thread import ServerThread

ALL = (1 << 64) - 1
MiB = 1 << 20


def config(tmp_path, **tape):
    data = {
        "server": {"listen": ["127.0.0.1:0"], "state_dir": str(tmp_path / "state"), "auth": ["md5", "text"]},
        "user": [{"name": "ndmp", "password": "secret"}],
        "tape": [{"name": "vtape0", "path": str(tmp_path / "c0.img"), **tape},
                 {"name": "vtape1", "path": str(tmp_path / "c1.img"), **tape}],
    }
    (tmp_path / "state").mkdir(exist_ok=True)
    return build(data, "<test>", tmp_path)


@pytest.fixture
def server(request, tmp_path):
    tape = getattr(request, "param", {"capacity": "4GiB"})
    s = ServerThread(config(tmp_path, **tape))
    yield s
    s.stop()


def endpoint(addr) -> tuple[str, int]:
    entry = addr.tcp_addr[0]
    return str(ipaddress.IPv4Address(entry.ip_addr)), entry.port


def stream_chunks(total: int, chunk: int = 4 * MiB):
    """Deterministic, non-repeating test data."""
    block = bytearray(hashlib.sha256(b"seed").digest() * (chunk // 32))
    sent = 0
    n = 0
    while sent < total:
        size = min(chunk, total - sent)
        block[:8] = n.to_bytes(8, "big")
        yield memoryview(block)[:size]
        sent += size
        n += 1


def send_over(sock: socket.socket, total: int) -> str:
    """Send ``total`` bytes of test data, close the connection; returns their SHA-256."""
    digest = hashlib.sha256()
    with sock:
        for chunk in stream_chunks(total):
            digest.update(chunk)
            sock.sendall(chunk)
    return digest.hexdigest()


def send_stream(addr: tuple[str, int], total: int) -> str:
    return send_over(socket.create_connection(addr), total)


def backup(dma, total: int, record_size: int, open_tape: bool = True) -> str:
    if open_tape:
        dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
    dma.call("MOVER_SET_RECORD_SIZE", len=record_size)
    dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
    reply = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
    digest = send_stream(endpoint(reply.connect_addr), total)
    halted = dma.wait_post(C.NOTIFY_MOVER_HALTED, timeout=300)
    assert halted.reason == C.MOVER_HALT_CONNECT_CLOSED
    state = dma.call("MOVER_GET_STATE")
    assert state.bytes_moved == total and state.record_num == -(-total // record_size)
    dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)
    dma.call("MOVER_STOP")
    return digest


def start_backup(dma, record_size: int, total: int, window: int = ALL) -> tuple[threading.Thread, dict]:
    """Open vtape0, start a TCP backup of ``total`` bytes with its sender in a thread; the
    dict gets the stream's digest as "d" once it is sent."""
    dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
    dma.call("MOVER_SET_RECORD_SIZE", len=record_size)
    dma.call("MOVER_SET_WINDOW", offset=0, length=window)
    reply = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
    result: dict = {}
    sender = threading.Thread(target=lambda: result.update(d=send_stream(endpoint(reply.connect_addr), total)),
                              daemon=True)
    sender.start()
    return sender, result


def start_recover(dma, record_size: int) -> socket.socket:
    dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
    dma.call("MOVER_SET_RECORD_SIZE", len=record_size)
    dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
    reply = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_WRITE, addr_type=C.ADDR_TCP)
    return socket.create_connection(endpoint(reply.connect_addr))


def receive(sock: socket.socket, length: int) -> bytes:
    out = bytearray()
    while len(out) < length:
        data = sock.recv(min(4 * MiB, length - len(out)))
        assert data, "data connection closed early"
        out += data
    return bytes(out)


def test_one_gib_through_tcp_into_a_cartridge_and_back(server):
    total = 1 << 30
    record = 256 << 10
    with server.client() as dma:
        sent = backup(dma, total, record)
        sock = start_recover(dma, record)
        dma.call("MOVER_READ", offset=0, length=total)
        digest = hashlib.sha256()
        left = total
        while left:
            data = sock.recv(min(4 * MiB, left))
            assert data
            digest.update(data)
            left -= len(data)
        assert digest.hexdigest() == sent
        state = dma.call("MOVER_GET_STATE")
        assert state.bytes_left_to_read == 0 and state.bytes_moved == total
        sock.close()
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED).reason == C.MOVER_HALT_CONNECT_CLOSED


def test_direct_access_reads_seek_inside_the_window_and_pause_outside(server):
    record = 4096
    total = 300 * record + 1000                 # the last record is padded
    expected = b"".join(bytes(c) for c in stream_chunks(total))
    with server.client() as dma:
        backup(dma, total, record)
        sock = start_recover(dma, record)
        for offset, length in [(150 * record + 17, 5000), (10, 100), (299 * record, 1000), (0, record * 2)]:
            dma.call("MOVER_READ", offset=offset, length=length)
            assert receive(sock, length) == expected[offset:offset + length]
        with pytest.raises(NdmpReplyError) as exc:     # a second read while one is outstanding
            dma.call("MOVER_READ", offset=0, length=ALL)
            dma.call("MOVER_READ", offset=0, length=10)
        assert exc.value.code == C.READ_IN_PROGRESS_ERR
        receive(sock, record)                   # drain some of the first
        sock.close()
        dma.wait_post(C.NOTIFY_MOVER_HALTED)
        dma.call("MOVER_STOP")
        dma.posts.clear()          # the whole-image read may have paused at the filemark before the close

        # a window covering only records 100..199: reads outside it pause with SEEK
        dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
        dma.call("TAPE_MTIO", tape_op=C.MTIO_FSR, count=100)
        dma.call("MOVER_SET_RECORD_SIZE", len=record)
        dma.call("MOVER_SET_WINDOW", offset=100 * record, length=100 * record)
        reply = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_WRITE, addr_type=C.ADDR_TCP)
        sock = socket.create_connection(endpoint(reply.connect_addr))
        dma.call("MOVER_READ", offset=120 * record + 5, length=100)
        assert receive(sock, 100) == expected[120 * record + 5:120 * record + 105]
        dma.call("MOVER_READ", offset=20 * record, length=100)
        paused = dma.wait_post(C.NOTIFY_MOVER_PAUSED)
        assert (paused.reason, paused.seek_position) == (C.MOVER_PAUSE_SEEK, 20 * record)
        state = dma.call("MOVER_GET_STATE")
        assert state.state == C.MOVER_STATE_PAUSED and state.bytes_left_to_read == 100
        # the DMA positions the tape at the right place and widens the window
        dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
        dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
        dma.call("MOVER_CONTINUE")
        assert receive(sock, 100) == expected[20 * record:20 * record + 100]
        sock.close()
        dma.wait_post(C.NOTIFY_MOVER_HALTED)


def test_local_data_connection(server):
    """LOCAL: the data side hands its buffers over; buffers that split records are joined."""
    total = 8 * MiB + 123
    with server.client() as dma:
        dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
        dma.call("MOVER_SET_RECORD_SIZE", len=65536)
        reply = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_LOCAL)
        assert reply.connect_addr.addr_type == C.ADDR_LOCAL
        session = server.only_session()
        peer, handoff = server.on_loop(session.mover.accept_local)    # what DATA_CONNECT(LOCAL) does
        assert dma.call("MOVER_GET_STATE").state == C.MOVER_STATE_ACTIVE
        digest = hashlib.sha256()
        for chunk in stream_chunks(total, chunk=1_000_032):           # not a multiple of the record
            digest.update(chunk)
            handoff.put(chunk)
        sent = digest.hexdigest()
        handoff.end()
        assert handoff.wait_finished(threading.Event())
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED).reason == C.MOVER_HALT_CONNECT_CLOSED
        with pytest.raises(BrokenPipeError):                          # the mover is gone
            handoff.put(memoryview(b"late"))
        peer.close()
        dma.call("MOVER_STOP")
        dma.call("TAPE_CLOSE")
    with Cartridge(server.ctx.config.tapes[0].path, False) as cart:
        data = b"".join(cart.read_payload(e, 1 << 20) for e in cart.entries() if not e.is_filemark)
    assert hashlib.sha256(data[:total]).hexdigest() == sent
    assert data[total:] == bytes(len(data) - total)           # zero padding of the last record


@pytest.mark.parametrize("server", [{"capacity": "1MiB", "early_warning": "128KiB"}], indirect=True)
def test_backup_spans_two_cartridges_on_eom(server):
    total = 1536 * 1024 + 999                   # more than one cartridge holds
    record = 32768
    with server.client() as dma:
        sender, result = start_backup(dma, record, total)
        paused = dma.wait_post(C.NOTIFY_MOVER_PAUSED)
        assert paused.reason == C.MOVER_PAUSE_EOM
        state = dma.call("MOVER_GET_STATE")
        assert state.state == C.MOVER_STATE_PAUSED and state.pause_reason == C.MOVER_PAUSE_EOM
        with pytest.raises(NdmpReplyError) as exc:        # v4: the record size is fixed once started
            dma.call("MOVER_SET_RECORD_SIZE", len=record)
        assert exc.value.code == C.ILLEGAL_STATE_ERR
        with pytest.raises(NdmpReplyError) as exc:        # the mover owns the tape... only while ACTIVE
            dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
        assert exc.value.code == C.DEVICE_OPENED_ERR
        first_part = state.seek_position
        assert first_part % record == 0 and 0 < first_part < total
        # the DMA's tape change: close this cartridge with a filemark, load the next one
        dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)
        dma.call("TAPE_CLOSE")
        dma.call("TAPE_OPEN", device="vtape1", mode=C.TAPE_RDWR_MODE)
        dma.call("MOVER_SET_WINDOW", offset=first_part, length=ALL)
        dma.call("MOVER_CONTINUE")
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED).reason == C.MOVER_HALT_CONNECT_CLOSED
        sender.join(timeout=30)
        assert dma.call("MOVER_GET_STATE").bytes_moved == total
        dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)
        dma.call("MOVER_STOP")
        dma.call("TAPE_CLOSE")
    parts = []
    for tape in server.ctx.config.tapes:
        with Cartridge(tape.path, False) as cart:
            parts.append(b"".join(cart.read_payload(e, record) for e in cart.entries() if not e.is_filemark))
    assert len(parts[0]) == first_part
    stream = b"".join(parts)
    assert hashlib.sha256(stream[:total]).hexdigest() == result["d"]
    assert stream[total:] == bytes(len(stream) - total)


def test_backup_pauses_exactly_at_the_window_end_with_small_records(server):
    """The mover writes records in batches; a window ending mid-batch still pauses on its edge."""
    record, total = 10240, 12 * 10240 + 77
    with server.client() as dma:
        sender, result = start_backup(dma, record, total, 5 * record)
        assert dma.wait_post(C.NOTIFY_MOVER_PAUSED).reason == C.MOVER_PAUSE_EOW
        state = dma.call("MOVER_GET_STATE")
        assert (state.record_num, state.bytes_moved) == (5, 5 * record)
        assert dma.call("TAPE_GET_STATE").blockno == 5
        dma.call("MOVER_SET_WINDOW", offset=5 * record, length=ALL)
        dma.call("MOVER_CONTINUE")
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED).reason == C.MOVER_HALT_CONNECT_CLOSED
        sender.join(timeout=30)
        state = dma.call("MOVER_GET_STATE")
        assert (state.record_num, state.bytes_moved) == (13, total)
        dma.call("MOVER_STOP")
        dma.call("TAPE_CLOSE")
    with Cartridge(server.ctx.config.tapes[0].path, False) as cart:
        records = [cart.read_payload(e, 1 << 20) for e in cart.entries() if not e.is_filemark]
    assert [len(r) for r in records] == [record] * 13
    assert hashlib.sha256(b"".join(records)[:total]).hexdigest() == result["d"]


def test_mover_connect_backs_up_from_a_listening_data_agent(server):
    """MOVER_CONNECT (v3/v4): the mover dials the data side (as in DATA_LISTEN + MOVER_CONNECT)."""
    from ndmpd.mover.addresses import Endpoint, to_ndmp
    total = 3 * MiB + 5
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with server.client(version=3) as dma:
        dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
        dma.call("MOVER_SET_RECORD_SIZE", len=65536)
        dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
        dma.call("MOVER_CONNECT", mode=C.MOVER_MODE_READ, addr=to_ndmp(Endpoint("127.0.0.1", port)))
        send_over(listener.accept()[0], total)
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED).reason == C.MOVER_HALT_CONNECT_CLOSED
        assert dma.call("MOVER_GET_STATE").bytes_moved == total
        dma.call("MOVER_STOP")
        listener.close()
        with pytest.raises(NdmpReplyError) as exc:          # nobody listens there any more
            dma.call("MOVER_CONNECT", mode=C.MOVER_MODE_READ, addr=to_ndmp(Endpoint("127.0.0.1", port)))
        assert exc.value.code == C.CONNECT_ERR
        assert dma.call("MOVER_GET_STATE").state == C.MOVER_STATE_IDLE


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_session_listens_on_ipv6(tmp_path):
    data = {
        "server": {"listen": ["[::1]:0"], "state_dir": str(tmp_path), "auth": ["md5"]},
        "user": [{"name": "ndmp", "password": "secret"}],
        "tape": [{"name": "vtape0", "path": str(tmp_path / "c.img")}],
    }
    try:
        srv = ServerThread(build(data, "<test>", tmp_path))
    except OSError:
        pytest.skip("cannot bind ::1")
    try:
        with srv.client() as dma:
            dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
            addr = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP).connect_addr
            entry = addr.tcp_addr[0]
            env = {p.name: p.value for p in entry.addr_env}
            assert env == {"AF": "INET6", "ADDR": "::1"} and entry.ip_addr == 0
            with socket.create_connection(("::1", entry.port)) as sock:
                sock.sendall(b"v6" * 1000)
            assert dma.wait_post(C.NOTIFY_MOVER_HALTED).reason == C.MOVER_HALT_CONNECT_CLOSED
            assert dma.call("MOVER_GET_STATE").bytes_moved == 2000
            dma.call("MOVER_STOP")
        with srv.client(version=3) as dma:                     # v3 addresses cannot carry IPv6
            dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
            with pytest.raises(NdmpReplyError) as exc:
                dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
            assert exc.value.code == C.ILLEGAL_ARGS_ERR
    finally:
        srv.stop()


@pytest.mark.parametrize("server", [{"capacity": "1MiB", "early_warning": "128KiB"}], indirect=True)
def test_a_mover_that_continues_past_the_early_warning_pauses_again_at_the_physical_end(server):
    """The mover and TAPE_WRITE agree: the early warning is one EOM pause, the records after it
    go on the same tape until the physical end, which is another EOM pause with the record
    that did not fit kept (no partial record), and a CONTINUE on that full tape pauses again
    at once, without writing: one pause per CONTINUE, never a loop or a lost record."""
    record = 32768
    with server.client() as dma:
        start_backup(dma, record, 2 * MiB)
        positions = []
        for _ in range(3):
            assert dma.wait_post(C.NOTIFY_MOVER_PAUSED).reason == C.MOVER_PAUSE_EOM
            state = dma.call("MOVER_GET_STATE")
            assert state.pause_reason == C.MOVER_PAUSE_EOM
            positions.append(state.bytes_moved)
            dma.call("MOVER_CONTINUE")                    # same tape: write on into the zone
        early, full, again = positions
        assert 0 < early < full == again < MiB
        dma.call("MOVER_ABORT")
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED).reason == C.MOVER_HALT_ABORTED
        dma.call("MOVER_STOP")
        dma.call("TAPE_CLOSE")
    with Cartridge(server.ctx.config.tapes[0].path, False) as cart:
        records = [e.length for e in cart.entries() if not e.is_filemark]
    assert records == [record] * (full // record)


class _MoverStub:
    """Just what the pump's record writer uses of a mover: position, window, tape, pauses."""

    def __init__(self, device) -> None:
        self.device = device
        self.position, self.window_end, self.records, self.pauses = 0, ALL, 0, []

    @contextlib.contextmanager
    def tape(self):
        yield self.device

    def advanced(self, record_bytes: int, data_bytes: int, records: int = 1) -> None:
        self.position += record_bytes
        self.records += records

    def pause(self, reason: int) -> None:
        self.pauses.append((reason, self.records))
        if len(self.pauses) > 3:
            raise pump.Halted                       # the DMA gives up


def test_an_st_drive_early_warning_inside_a_batch_pauses_the_mover_and_keeps_every_record():
    """st takes a batch one write(2) per record; the early warning met in the middle of one
    must still pause the mover (EOM) with the records before it counted, not vanish into a
    short batch, and at the physical end nothing that did not fit is counted as written."""
    kernel = FakeStKernel(1 << 20, 128 << 10)
    st = LinuxTape("st", "/dev/nst0", sys=kernel)
    st.open(write=True)
    mover = _MoverStub(st)
    record = 32 << 10
    with pytest.raises(pump.Halted):
        pump._write_records(mover, memoryview(bytes(64 * record)), record)
    early, *full = mover.pauses
    assert early == (C.MOVER_PAUSE_EOM, (1024 - 128) // 32 + 1)    # the one that crossed the mark went out
    assert [reason for reason, _ in full] == [C.MOVER_PAUSE_EOM] * 3
    assert {records for _, records in full} == {32}              # the cartridge holds 32 of them
    assert len([item for item in kernel.items if item]) == mover.records == 32


def pause_posts(dma) -> list:
    """The NOTIFY_MOVER_PAUSED posts received so far (taken off the queue)."""
    taken = [body for code, body in dma.posts if code == C.NOTIFY_MOVER_PAUSED]
    dma.posts = type(dma.posts)((c, b) for c, b in dma.posts if c != C.NOTIFY_MOVER_PAUSED)
    return taken


def read_first_of_two_parts(dma, record: int, first: int, second: int) -> tuple[socket.socket, bytes]:
    """Amanda's restore start: two tape files of ``first`` and ``second`` bytes, then one
    MOVER_READ(0, all) that streams the first and pauses EOF at its filemark. Returns the data
    connection and the bytes the second part must bring."""
    backup(dma, first, record)
    backup(dma, second, record, open_tape=False)
    sock = start_recover(dma, record)
    sock.settimeout(10)                     # a mover that pauses instead fails, not hangs
    dma.call("MOVER_READ", offset=0, length=ALL)
    receive(sock, first)
    paused = dma.wait_post(C.NOTIFY_MOVER_PAUSED)
    assert (paused.reason, paused.seek_position) == (C.MOVER_PAUSE_EOF, first)
    return sock, b"".join(bytes(c) for c in stream_chunks(second))


def test_a_continue_that_runs_back_into_the_filemark_notifies_before_its_reply(server):
    """Amanda's restore flow (ndmp-device.c): MOVER_READ(0, all) at once, so part 1 may be
    streamed and paused at its filemark before Amanda starts the part; Amanda then sends
    SET_WINDOW + CONTINUE without moving the tape and waits for one notification. The pause
    that CONTINUE leads into must be posted before the reply (Amanda latches one pending
    notification), with reason EOF, so it is not taken for the end of the next part."""
    record = 8192
    first, second = 20 * record, 12 * record
    with server.client() as dma:
        sock, expected = read_first_of_two_parts(dma, record, first, second)

        dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)        # the tape did not move
        dma.call("MOVER_CONTINUE")
        again = pause_posts(dma)
        assert [(p.reason, p.seek_position) for p in again] == [(C.MOVER_PAUSE_EOF, first)]
        state = dma.call("MOVER_GET_STATE")
        assert (state.state, state.bytes_moved) == (C.MOVER_STATE_PAUSED, first)

        # the next part: the DMA positions the tape, binds the window there and continues
        dma.call("TAPE_MTIO", tape_op=C.MTIO_FSF, count=1)
        dma.call("MOVER_SET_WINDOW", offset=first, length=ALL - first)
        dma.call("MOVER_CONTINUE")
        assert receive(sock, second) == expected
        paused = dma.wait_post(C.NOTIFY_MOVER_PAUSED)
        assert (paused.reason, paused.seek_position) == (C.MOVER_PAUSE_EOF, first + second)
        assert pause_posts(dma) == []
        dma.call("MOVER_CLOSE")
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED).reason == C.MOVER_HALT_CONNECT_CLOSED
        sock.close()


REPAUSE_BOUND = 1.0     # seconds for three CONTINUEs that pause again at once (on main up to 2 s each)


def continue_into_the_same_pause(dma, reason: int, times: int = 3) -> float:
    """CONTINUE ``times`` on a mover that can only pause again with ``reason``; each pause is
    posted before the reply. Returns the seconds they took."""
    start = time.monotonic()
    for _ in range(times):
        dma.posts.clear()
        dma.call("MOVER_CONTINUE")
        assert [body.reason for code, body in dma.posts if code == C.NOTIFY_MOVER_PAUSED] == [reason]  # before the reply
        assert dma.call("MOVER_GET_STATE").pause_reason == reason
    return time.monotonic() - start


@pytest.mark.parametrize("server", [{"capacity": "1MiB", "early_warning": "128KiB"}], indirect=True)
def test_a_continue_on_a_full_tape_is_answered_as_soon_as_the_mover_pauses_again(server):
    """The CONTINUE reply waits for the pump's first step, and pausing again is that step: on
    main the reply waited out the settle timeout whenever its wait began before the pump paused
    (a DMA retrying a full tape, or Amanda's restore running into a filemark, lost 2 s a CONTINUE)."""
    with server.client() as dma:
        start_backup(dma, 32768, 2 * MiB)
        for _ in range(2):                                   # the early warning, then the physical end
            assert dma.wait_post(C.NOTIFY_MOVER_PAUSED).reason == C.MOVER_PAUSE_EOM
            if _ == 0:
                dma.call("MOVER_CONTINUE")
        elapsed = continue_into_the_same_pause(dma, C.MOVER_PAUSE_EOM)
        dma.call("MOVER_ABORT")
    assert elapsed < REPAUSE_BOUND, f"3 CONTINUEs on a full tape took {elapsed:.1f} s"


def test_a_continue_in_front_of_a_filemark_is_answered_as_soon_as_the_mover_pauses_again(server):
    record = 4096
    with server.client() as dma:
        backup(dma, 10 * record, record)
        sock = start_recover(dma, record)
        dma.call("MOVER_READ", offset=0, length=20 * record)     # more than this tape file holds
        assert len(receive(sock, 10 * record)) == 10 * record
        assert dma.wait_post(C.NOTIFY_MOVER_PAUSED).reason == C.MOVER_PAUSE_EOF
        elapsed = continue_into_the_same_pause(dma, C.MOVER_PAUSE_EOF)
        sock.close()
        dma.call("MOVER_ABORT")
    assert elapsed < REPAUSE_BOUND, f"3 CONTINUEs in front of a filemark took {elapsed:.1f} s"


def test_a_window_set_past_an_outstanding_read_continues_the_stream_at_the_window_start(server):
    """Amanda's restore of a dump split across cartridges: one MOVER_READ(0, all) for the whole
    dump; after the change the new Device counts the mover's bytes_moved from 0
    (ndmp-device.c read_to_connection_impl), so its next window starts past the bytes already
    sent. The DMA has positioned the tape and bound the window there, and it cannot re-aim a
    read in progress (MOVER_READ is refused while bytes are outstanding): the stream goes on
    at the window start, as illumos's mover does (SET_WINDOW sets its position), instead of a
    SEEK pause that Amanda takes for the end of the part and silently loses the rest."""
    record = 8192
    first, second = 20 * record, 12 * record
    with server.client() as dma:
        sock, expected = read_first_of_two_parts(dma, record, first, second)

        dma.call("TAPE_MTIO", tape_op=C.MTIO_FSF, count=1)
        window = first + first                                     # past the first + bytes_moved
        dma.call("MOVER_SET_WINDOW", offset=window, length=ALL - window)
        dma.call("MOVER_CONTINUE")
        assert receive(sock, second) == expected
        paused = dma.wait_post(C.NOTIFY_MOVER_PAUSED)
        assert (paused.reason, paused.seek_position) == (C.MOVER_PAUSE_EOF, window + second)
        state = dma.call("MOVER_GET_STATE")
        assert (state.bytes_moved, state.bytes_left_to_read) == (first + second, ALL)
        dma.call("MOVER_CLOSE")
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED).reason == C.MOVER_HALT_CONNECT_CLOSED
        sock.close()


def test_a_window_set_before_an_outstanding_read_still_seeks_to_the_read(server):
    """The other side of the same rule: a window that starts at or before the byte the read
    wants (ndmjob's DMA after a tape change) keeps the read's offset; the mover seeks to it."""
    record = 8192
    first = 20 * record
    with server.client() as dma:
        backup(dma, first, record)
        expected = b"".join(bytes(c) for c in stream_chunks(first))
        sock = start_recover(dma, record)
        sock.settimeout(10)                     # a mover that pauses instead fails, not hangs
        dma.call("MOVER_READ", offset=4 * record, length=ALL)
        assert receive(sock, first - 4 * record) == expected[4 * record:]
        assert dma.wait_post(C.NOTIFY_MOVER_PAUSED).reason == C.MOVER_PAUSE_EOF
        dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
        dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)        # the same image again from its start
        dma.call("MOVER_CONTINUE")
        paused = dma.wait_post(C.NOTIFY_MOVER_PAUSED)
        assert (paused.reason, paused.seek_position) == (C.MOVER_PAUSE_EOF, first)
        assert dma.call("MOVER_GET_STATE").bytes_moved == first - 4 * record
        dma.call("MOVER_CLOSE")
        sock.close()
