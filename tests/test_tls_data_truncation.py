"""A TLS data connection cut short (TCP FIN or RST without close_notify, inside a TLS record or
between two) ends a restore, a copy (data to data, or mover to mover) and a three-way backup as
a failure on every side, never as a clean end: a data service halts CONNECT_ERROR, a mover
CONNECT_ERROR, and each says in a LOG_MESSAGE that the TLS stream was cut. The same runs
through the same proxy, uncut, succeed.

One ndmpd server, two sessions pinned to its own certificate: the mover (or a copy's
destination) listens, the data service (the copy's source) connects through the proxy."""

from __future__ import annotations

import ipaddress
import os

import pytest

from ndmpd.tls.certs import certificate_der
from ndmpd.tls.data import EXTENSION_CLASS, EXTENSION_VERSION
from ndmpd.config import build
from ndmpd.wire import C, T

from .server_thread import ServerThread
from .tls_helpers import CuttingProxy, pair

ALL = (1 << 64) - 1
MiB = 1 << 20
RECORD = 64 << 10
CUT = "TLS data stream cut"

# (where the proxy cuts, how): inside a TLS record, after a whole record, and an RST
CUTS = [pytest.param((2 * MiB + 7, False, False), id="fin-inside-a-record"),
        pytest.param((2 * MiB, True, False), id="fin-between-records"),
        pytest.param((2 * MiB + 7, False, True), id="rst")]


@pytest.fixture
def server(tmp_path):
    own = pair(tmp_path / "tls")
    vol = tmp_path / "vol"
    vol.mkdir()
    (tmp_path / "dest").mkdir()
    for i in range(3):
        (vol / f"f{i}").write_bytes(os.urandom(2 * MiB + i))
    state = tmp_path / "state"
    state.mkdir()
    data = {"server": {"listen": ["127.0.0.1:0"], "state_dir": str(state), "auth": ["md5", "text"],
                       "tls_certificate": str(own.certificate), "tls_key": str(own.key)},
            "user": [{"name": "ndmp", "password": "secret"}],
            "volume": [{"name": "/vol", "path": str(vol), "snapshot": "none"},
                       {"name": "/dest", "path": str(tmp_path / "dest"), "snapshot": "none"}],
            "tape": [{"name": "vtape0", "path": str(tmp_path / "c0.img"), "capacity": "1GiB"},
                     {"name": "vtape1", "path": str(tmp_path / "c1.img"), "capacity": "1GiB"}]}
    s = ServerThread(build(data, "<test>", tmp_path))
    s.own = certificate_der(own.certificate)
    s.vol = vol
    yield s
    s.stop()


def tls_client(server):
    """A session whose TCP data connections are TLS, pinned to the server's own certificate."""
    dma = server.client()
    dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=[T.class_version(EXTENSION_CLASS, EXTENSION_VERSION)])
    dma.call("NDMPD_TLS_DATA_PEER", peer_certificate=server.own)
    return dma


def messages(dma) -> str:
    return "\n".join(body.entry for code, body in dma.posts if code == C.LOG_MESSAGE)


def through(proxy: CuttingProxy) -> object:
    return T.addr(addr_type=C.ADDR_TCP, tcp_addr=[T.tcp_addr(ip_addr=int(ipaddress.IPv4Address("127.0.0.1")),
                                                             port=proxy.port, addr_env=[])])


def cutting(listen, cut: tuple, direction: str) -> CuttingProxy:
    """A CuttingProxy in front of the listener ``listen`` announced; ``cut``: one of CUTS."""
    cut_at, whole_records, reset = cut
    return CuttingProxy(listen.connect_addr.tcp_addr[0].port, cut_at, direction, whole_records, reset)


def back_up_to_tape(server) -> None:
    """A LOCAL (plain) backup of /vol onto vtape0: the image the restores read."""
    with server.client() as dma:
        dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
        dma.call("MOVER_SET_RECORD_SIZE", len=RECORD)
        dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
        dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_LOCAL)
        dma.call("DATA_CONNECT", addr=T.addr(addr_type=C.ADDR_LOCAL))
        dma.call("DATA_START_BACKUP", butype_name="tar", env=[T.pval(name="FILESYSTEM", value="/vol")])
        assert dma.wait_post(C.NOTIFY_DATA_HALTED).reason == C.DATA_HALT_SUCCESSFUL
        dma.wait_post(C.NOTIFY_MOVER_HALTED)
        dma.call("DATA_STOP")
        dma.call("MOVER_STOP")
        dma.call("TAPE_CLOSE")


def restored_whole(server, target) -> bool:
    return all((target / f.name).is_file() and (target / f.name).read_bytes() == f.read_bytes()
               for f in server.vol.iterdir())


def restore(server, tmp_path, cut):
    """A three-way restore of the tape's image through a CuttingProxy: (data halt reason, data
    service's log, mover halt reason, mover's log, whether every file came back whole)."""
    back_up_to_tape(server)
    target = tmp_path / "dest" / "restored"
    with tls_client(server) as tape, tls_client(server) as data:
        tape.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)
        tape.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
        tape.call("MOVER_SET_RECORD_SIZE", len=RECORD)
        tape.call("MOVER_SET_WINDOW", offset=0, length=ALL)
        listen = tape.call("MOVER_LISTEN", mode=C.MOVER_MODE_WRITE, addr_type=C.ADDR_TCP)
        proxy = cutting(listen, cut, "back")
        try:
            data.call("DATA_CONNECT", addr=through(proxy))
            data.call("DATA_START_RECOVER", butype_name="tar", nlist=[],
                      env=[T.pval(name="FILESYSTEM", value="/vol"), T.pval(name="PREFIX", value=str(target))])
            read = data.wait_post(C.NOTIFY_DATA_READ, timeout=20)
            tape.call("MOVER_READ", offset=read.offset, length=read.length)
            if cut[0] is None:            # the mover stops at the image's end: the DMA closes it there
                assert tape.wait_post(C.NOTIFY_MOVER_PAUSED, timeout=30).reason == C.MOVER_PAUSE_EOF
                tape.call("MOVER_CLOSE")
            halted = data.wait_post(C.NOTIFY_DATA_HALTED, timeout=30)
            mover = tape.wait_post(C.NOTIFY_MOVER_HALTED, timeout=30)
            data.call("DATA_STOP")
            tape.call("MOVER_STOP")
        finally:
            proxy.close()
        return halted.reason, messages(data), mover.reason, messages(tape), target.exists() and restored_whole(server, target)


def test_an_uncut_tls_restore_through_the_proxy_succeeds(server, tmp_path):
    reason, said, _, _, whole = restore(server, tmp_path, (None, False, False))
    assert reason == C.DATA_HALT_SUCCESSFUL, said
    assert whole and CUT not in said


@pytest.mark.parametrize("cut", CUTS)
def test_a_restore_whose_tls_stream_is_cut_fails_on_both_sides_and_says_why(server, tmp_path, cut):
    reason, said, mover, mover_said, whole = restore(server, tmp_path, cut)
    assert reason == C.DATA_HALT_CONNECT_ERROR, said
    assert CUT in said and "restore failed" in said, said
    assert mover == C.MOVER_HALT_CONNECT_ERROR and CUT in mover_said, mover_said
    assert not whole


def copy(server, tmp_path, cut):
    """A data-to-data copy of /vol (as ``ndmp copy`` runs it) through a CuttingProxy: (source's
    halt reason and log, destination's halt reason and log, whether every file arrived whole)."""
    target = tmp_path / "dest" / "copied"
    with tls_client(server) as source, tls_client(server) as dest:
        listen = dest.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        proxy = cutting(listen, cut, "forth")
        try:
            source.call("DATA_CONNECT", addr=through(proxy))
            dest.call("DATA_START_RECOVER", butype_name="tar", nlist=[], env=[T.pval(name="PREFIX", value=str(target))])
            source.call("DATA_START_BACKUP", butype_name="tar", env=[T.pval(name="FILESYSTEM", value="/vol")])
            sent = source.wait_post(C.NOTIFY_DATA_HALTED, timeout=30)
            received = dest.wait_post(C.NOTIFY_DATA_HALTED, timeout=30)
            source.call("DATA_STOP")
            dest.call("DATA_STOP")
        finally:
            proxy.close()
        return (sent.reason, messages(source), received.reason, messages(dest),
                target.exists() and restored_whole(server, target))


def test_an_uncut_tls_copy_through_the_proxy_succeeds(server, tmp_path):
    sent, source_said, received, dest_said, whole = copy(server, tmp_path, (None, False, False))
    assert (sent, received) == (C.DATA_HALT_SUCCESSFUL, C.DATA_HALT_SUCCESSFUL), (source_said, dest_said)
    assert whole


@pytest.mark.parametrize("cut", CUTS)
def test_a_copy_whose_tls_stream_is_cut_fails_on_both_sides_and_says_why(server, tmp_path, cut):
    sent, source_said, received, dest_said, whole = copy(server, tmp_path, cut)
    assert received == C.DATA_HALT_CONNECT_ERROR and CUT in dest_said, dest_said
    assert sent == C.DATA_HALT_CONNECT_ERROR and CUT in source_said, source_said
    assert not whole


def backup(server, cut):
    """A three-way backup of /vol to vtape0 through a CuttingProxy, the mover taking the stream
    through its handoff: (data halt reason and log, mover halt reason and log)."""
    with tls_client(server) as tape, tls_client(server) as data:
        tape.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
        tape.call("MOVER_SET_RECORD_SIZE", len=RECORD)
        tape.call("MOVER_SET_WINDOW", offset=0, length=ALL)
        listen = tape.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
        proxy = cutting(listen, cut, "forth")
        try:
            data.call("DATA_CONNECT", addr=through(proxy))
            data.call("DATA_START_BACKUP", butype_name="tar", env=[T.pval(name="FILESYSTEM", value="/vol")])
            halted = data.wait_post(C.NOTIFY_DATA_HALTED, timeout=30)
            mover = tape.wait_post(C.NOTIFY_MOVER_HALTED, timeout=30)
            data.call("DATA_STOP")
            tape.call("MOVER_STOP")
        finally:
            proxy.close()
        return halted.reason, messages(data), mover.reason, messages(tape)


@pytest.mark.parametrize("cut", CUTS)
def test_a_three_way_backup_whose_tls_stream_is_cut_fails_on_both_sides_and_says_why(server, cut):
    reason, said, mover, mover_said = backup(server, cut)
    assert reason == C.DATA_HALT_CONNECT_ERROR and CUT in said, said
    assert mover == C.MOVER_HALT_CONNECT_ERROR and CUT in mover_said, mover_said


def test_an_uncut_three_way_tls_backup_through_the_proxy_succeeds(server):
    reason, said, mover, _ = backup(server, (None, False, False))
    assert (reason, mover) == (C.DATA_HALT_SUCCESSFUL, C.MOVER_HALT_CONNECT_CLOSED), said


def tape_copy(server, cut):
    """A mover-to-mover copy of vtape0's image onto vtape1 through a CuttingProxy, the DMA asking
    the sending mover for the whole image: (sender's halt reason and log, receiver's)."""
    back_up_to_tape(server)
    with tls_client(server) as sender, tls_client(server) as receiver:
        receiver.call("TAPE_OPEN", device="vtape1", mode=C.TAPE_RDWR_MODE)
        sender.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)
        sender.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
        for mover in (sender, receiver):
            mover.call("MOVER_SET_RECORD_SIZE", len=RECORD)
            mover.call("MOVER_SET_WINDOW", offset=0, length=ALL)
        listen = receiver.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
        proxy = cutting(listen, cut, "forth")
        try:
            sender.call("MOVER_CONNECT", mode=C.MOVER_MODE_WRITE, addr=through(proxy))
            sender.call("MOVER_READ", offset=0, length=ALL)
            if cut[0] is None:            # the image is sent: the DMA closes the sender at its end
                assert sender.wait_post(C.NOTIFY_MOVER_PAUSED, timeout=30).reason == C.MOVER_PAUSE_EOF
                sender.call("MOVER_CLOSE")
            sent = sender.wait_post(C.NOTIFY_MOVER_HALTED, timeout=30)
            received = receiver.wait_post(C.NOTIFY_MOVER_HALTED, timeout=30)
            for mover in (sender, receiver):
                mover.call("MOVER_STOP")
        finally:
            proxy.close()
        return sent.reason, messages(sender), received.reason, messages(receiver)


def test_an_uncut_tls_mover_to_mover_copy_through_the_proxy_succeeds(server):
    sent, _, received, said = tape_copy(server, (None, False, False))
    assert (sent, received) == (C.MOVER_HALT_CONNECT_CLOSED, C.MOVER_HALT_CONNECT_CLOSED), said
    assert CUT not in said


@pytest.mark.parametrize("cut", CUTS)
def test_a_mover_to_mover_copy_whose_tls_stream_is_cut_fails_on_both_movers_and_says_why(server, cut):
    sent, sender_said, received, receiver_said = tape_copy(server, cut)
    assert received == C.MOVER_HALT_CONNECT_ERROR and CUT in receiver_said, receiver_said
    assert sent == C.MOVER_HALT_CONNECT_ERROR and CUT in sender_said, sender_said
