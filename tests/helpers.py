"""A minimal DMA side for tests: builds request records and reads the server's replies."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ndmpd.config import build
from ndmpd.context import ServerContext
from ndmpd.session import Session
from ndmpd.wire import REPLY, REQUEST, protocol
from ndmpd.wire.message import Header, unpack_header
from ndmpd.wire.records import RecordReader, frame


def make_config(tmp_path, **server: Any):
    """A valid configuration with user ndmp/secret, one volume and one virtual tape."""
    vol = tmp_path / "vol"
    vol.mkdir(exist_ok=True)
    data = {
        "server": {"listen": ["127.0.0.1:10000"], "state_dir": str(tmp_path / "state"), **server},
        "user": [{"name": "ndmp", "password": "secret"}],
        "volume": [{"name": "/export/data", "path": str(vol)}],
        "tape": [{"name": "vtape0", "path": str(tmp_path / "vtape0.img")}],
    }
    return build(data, "<test>", tmp_path)


@dataclass
class Message:
    header: Header
    body: Any


class FakeDma:
    """Drives a sans-IO Session as a DMA would, one request at a time."""

    def __init__(self, session: Session, version: int = 4) -> None:
        self.session = session
        self.version = version
        self.seq = 0
        self.reader = RecordReader(1 << 26)
        self.received: list[Message] = []

    def pump(self) -> list[Message]:
        out = []
        for record in self.reader.feed(self.session.data_to_send()):
            header = unpack_header(record)
            proto = protocol(self.version)
            body = None
            if header.error_code == 0 and proto.message(header.message_code):
                body = proto.decode_body(header.message_code, header.message_type, record)
            out.append(Message(header, body))
        self.received += out
        return out

    def raw(self, record: bytes) -> list[Message]:
        self.session.receive_data(frame(record))
        return self.pump()

    def request_record(self, code: int, body: Any = None, seq: int | None = None) -> bytes:
        self.seq += 1
        proto = protocol(self.version)
        payload = proto.encode_body(code, REQUEST, body) if body is not None else b""
        return Header(self.seq if seq is None else seq, 1700000000, REQUEST, code, 0, 0).pack() + payload

    def call(self, message: str, /, **fields: Any) -> Message:
        """Send request MESSAGE with the given body fields; return the one reply."""
        proto = protocol(self.version)
        spec = proto.by_name[message]
        body = proto.codec.classes[spec.request](**fields) if spec.request else None
        replies = [m for m in self.raw(self.request_record(spec.code, body)) if m.header.message_type == REPLY]
        assert len(replies) == 1, replies
        return replies[0]


def new_session(config, **ctx: Any) -> tuple[Session, FakeDma]:
    session = Session(ServerContext(config, **ctx), "test")
    session.greet()
    dma = FakeDma(session)
    greeting = dma.pump()
    assert greeting[0].header.message_code == 0x502
    return session, dma


def short_record(n: int) -> bytes:
    return struct.pack(">I", 0x80000000 | n) + bytes(n)
