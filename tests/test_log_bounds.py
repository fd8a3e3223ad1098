"""Log lines have a bound: whatever a peer sends, one event is one short, escaped line, and an
unauthenticated peer cannot make the server hold a huge message."""

from __future__ import annotations

import logging
import os
import socket
import struct
import time

import pytest

from ndmpd.logtext import BoundedFormatter, peer_text
from ndmpd.wire import REPLY, REQUEST, protocol
from ndmpd.wire.message import Header, unpack_header
from ndmpd.wire.records import RecordReader, frame

from .helpers import make_config, new_session
from .server_process import ServerProcess, free_loopback_address

P4 = protocol(4)
T4, C4 = P4.types, P4.const
HUGE = 7 << 20


def text_auth(user: str, password: str) -> object:
    return T4.auth_data(C4.AUTH_TEXT, auth_text=T4.auth_text(user, password))


def logged_text(caplog) -> str:
    formatter = BoundedFormatter("%(levelname)s %(name)s: %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


def test_peer_text_cuts_before_escaping_and_names_the_length():
    text = peer_text("a\nb\x1b[31m\udcff" + "x" * 10_000, limit=20)
    assert "\n" not in text and "\x1b" not in text and "\\n" in text and "\\x1b" in text and "\\xff" in text
    assert text.endswith("...[10009 chars]") and len(text) < 60
    assert peer_text(b"\xff\xfe/etc") == "\\xff\\xfe/etc"
    assert peer_text("back\\slash") == "back\\\\slash"      # an escape cannot be forged
    assert peer_text("日本語/é") == "日本語/é"                 # printable names stay readable


def test_formatter_bounds_every_line_tracebacks_included():
    formatter = BoundedFormatter("%(message)s", limit=300)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s", ("y" * 5000,), exc_info=True)
        record.exc_info = __import__("sys").exc_info()
    line = formatter.format(record)
    assert "\n" not in line and len(line) < 400 and line.endswith("chars]")


@pytest.mark.parametrize("auth_id", ["x" * HUGE, "\udcff\n" * (HUGE // 2)])
def test_huge_pre_auth_auth_id_is_refused_unbuffered_and_the_session_goes_on(tmp_path, caplog, auth_id):
    caplog.set_level(logging.DEBUG, logger="ndmpd")
    session, dma = new_session(make_config(tmp_path, auth=["text"]))
    assert dma.call("CONNECT_OPEN", protocol_version=4).body.error == C4.NO_ERR
    reply = dma.call("CONNECT_CLIENT_AUTH", auth_data=text_auth(auth_id, "secret"))
    assert reply.body.error in (C4.ILLEGAL_ARGS_ERR, C4.NOT_AUTHORIZED_ERR)
    assert not session.authenticated
    assert session.buffered < 64 << 10
    text = logged_text(caplog)
    assert len(text.encode()) < 16 << 10, "a 7 MiB name must not reach the log"
    assert all(len(line) < 8300 for line in text.splitlines())
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=text_auth("ndmp", "secret")).body.error == C4.NO_ERR
    assert dma.call("CONFIG_GET_HOST_INFO").body.error == C4.NO_ERR


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_peer_strings_reach_the_log_as_one_escaped_bounded_line(tmp_path, caplog, level):
    caplog.set_level(level, logger="ndmpd")
    session, dma = new_session(make_config(tmp_path, auth=["text"]))
    forged = "ndmp\n2026-01-01 00:00:00 INFO ndmpd.connect: x: authenticated as 'root'" + "z" * 9000
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=text_auth(forged, "pw")).body.error == C4.NOT_AUTHORIZED_ERR
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=text_auth("ndmp", "secret")).body.error == C4.NO_ERR
    device = "vtape9\r\n\x00" + "d" * 50_000
    assert dma.call("TAPE_OPEN", device=device, mode=C4.TAPE_READ_MODE).body.error == C4.NO_DEVICE_ERR
    messages = [r.getMessage() for r in caplog.records]
    assert any("authentication refused" in m for m in messages)
    for message in messages:
        assert "\n" not in message and "\r" not in message and "\x00" not in message
        assert len(message) < 1024, message[:200]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _replies(sock: socket.socket, reader: RecordReader, want: int) -> list[tuple[Header, bytes]]:
    out: list[tuple[Header, bytes]] = []
    deadline = time.monotonic() + 20
    while len(out) < want and time.monotonic() < deadline:
        data = sock.recv(1 << 16)
        if not data:
            break
        for record in reader.feed(data):
            header = unpack_header(record)
            if header.message_type == REPLY:
                out.append((header, record))
    return out


def test_server_log_and_memory_stay_bounded_for_a_7mib_auth_id(tmp_path):
    host = free_loopback_address()
    if host is None:
        pytest.skip("no free 127.0.0.N:10000")
    (tmp_path / "state").mkdir()
    config = tmp_path / "ndmpd.toml"
    config.write_text(f'[server]\nlisten = ["{host}:10000"]\nstate_dir = "{tmp_path / "state"}"\n'
                      f'auth = ["text"]\nlog_level = "debug"\n\n[[user]]\nname = "ndmp"\npassword = "pw"\n')
    config.chmod(0o600)
    log = tmp_path / "ndmpd.log"
    server = ServerProcess(host, config, log, "pw")
    try:
        sock = socket.create_connection((host, 10000), timeout=20)
        reader = RecordReader(1 << 20)
        seq = 0

        def send(code: int, body: object = None) -> None:
            nonlocal seq
            seq += 1
            payload = P4.encode_body(code, REQUEST, body) if body is not None else b""
            sock.sendall(frame(Header(seq, 1, REQUEST, code, 0, 0).pack() + payload))

        send(C4.CONNECT_OPEN, T4.connect_open_request(4))
        assert _replies(sock, reader, 1)[0][0].error_code == C4.NO_ERR
        time.sleep(0.3)
        log_before, rss_before = log.stat().st_size, _rss_kib(server.proc.pid)
        send(C4.CONNECT_CLIENT_AUTH, T4.connect_client_auth_request(text_auth("\udcfe" * HUGE, "pw")))
        (header, record), = _replies(sock, reader, 1)
        error = header.error_code or struct.unpack_from(">I", record, 24)[0]
        assert error in (C4.ILLEGAL_ARGS_ERR, C4.NOT_AUTHORIZED_ERR)
        time.sleep(0.3)
        grown_log = log.stat().st_size - log_before
        grown_rss = _rss_kib(server.proc.pid) - rss_before
        assert grown_log < 16 << 10, f"{grown_log} bytes of log for one request"
        assert grown_rss < 6 << 10, f"RSS grew by {grown_rss} KiB"
        send(C4.CONNECT_CLIENT_AUTH, T4.connect_client_auth_request(text_auth("ndmp", "pw")))
        send(C4.CONFIG_GET_HOST_INFO)
        (auth, _), (info, body) = _replies(sock, reader, 2)
        assert auth.error_code == C4.NO_ERR and info.error_code == C4.NO_ERR
        assert struct.unpack_from(">I", body, 24)[0] == C4.NO_ERR
        sock.close()
    finally:
        assert server.stop() == 0
    assert os.path.getsize(log) < 1 << 20
