"""NDMP-specific view of the compiled ``.x`` files: messages, bodies and constants per version.

The naming rule in ``protocol/ndmpN.x`` (message ``NDMPN_FOO`` has bodies ``ndmpN_foo_request``,
``ndmpN_foo_reply`` or ``ndmpN_foo_post``) is applied here, so adding a message to a ``.x``
file is all it takes for the codec to know it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .xdr_codec import Codec, XdrError
from .xdr_parser import parse_file

SUPPORTED_VERSIONS = (2, 3, 4)
HEADER_SIZE = 24
REQUEST, REPLY = 0, 1


@dataclass(frozen=True)
class MessageSpec:
    """One message of one protocol version."""

    code: int
    name: str                   # without the NDMPn_ prefix, e.g. "CONFIG_GET_HOST_INFO"
    request: str | None         # body type names (None: empty body)
    reply: str | None
    post: str | None

    @property
    def has_reply(self) -> bool:
        """Posts (NOTIFY, LOG, FH) and CONNECT_CLOSE are never answered."""
        return self.post is None and self.name != "CONNECT_CLOSE"


def protocol_dir() -> Path:
    """Where the ``.x`` files are: packaged beside the code, or the source tree's protocol/."""
    override = os.environ.get("NDMPD_PROTOCOL_DIR")
    candidates = [Path(override)] if override else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "protocol", here.parent.parent / "protocol"]
    for candidate in candidates:
        if (candidate / "ndmp4.x").is_file():
            return candidate
    raise FileNotFoundError("NDMP protocol definitions (ndmp4.x) not found; set NDMPD_PROTOCOL_DIR")


class Protocol:
    """Codec and message table of one NDMP version."""

    def __init__(self, version: int, path: Path) -> None:
        self.version = version
        self.prefix = f"NDMP{version}_"
        spec = parse_file(path)
        self.codec = Codec(spec, f"ndmp{version}")
        lower = f"ndmp{version}_"
        consts: dict[str, int] = {}
        for name, value in spec.consts.items():
            consts[name.removeprefix(self.prefix)] = value
        for enum in spec.enums.values():
            for name, value in enum.members.items():
                consts[name.removeprefix(self.prefix)] = value
        self.const = SimpleNamespace(**consts)
        self.types = SimpleNamespace(**{n.removeprefix(lower): c for n, c in self.codec.classes.items()})
        self.messages: dict[int, MessageSpec] = {}
        self.by_name: dict[str, MessageSpec] = {}
        for member, code in spec.enums[f"ndmp{version}_message"].members.items():
            short = member.removeprefix(self.prefix)
            base = lower + short.lower()
            known = self.codec.classes

            def body(suffix: str, base: str = base) -> str | None:
                return base + suffix if base + suffix in known else None
            msg = MessageSpec(code, short, body("_request"), body("_reply"), body("_post"))
            if msg.has_reply and msg.reply is None:
                raise XdrError(f"{path.name}: message {member} has no {base}_reply")
            self.messages[code] = msg
            self.by_name[short] = msg
        self.header_type = lower + "header"
        self.error_names = {v: k.removeprefix(self.prefix) for k, v in spec.enums[f"ndmp{version}_error"].members.items()}

    def message(self, code: int) -> MessageSpec | None:
        """The message with this code in this version, or None when the version lacks it."""
        return self.messages.get(code)

    def body_type(self, code: int, message_type: int) -> str | None:
        """Body type name for a request/post (type 0) or reply (type 1); None for empty."""
        msg = self.messages[code]
        if message_type == REPLY:
            return msg.reply
        return msg.request or msg.post

    def decode_body(self, code: int, message_type: int, data: bytes, offset: int = HEADER_SIZE) -> Any:
        """Decode the body of a message; None for messages without a body."""
        name = self.body_type(code, message_type)
        if name is None:
            return None
        return self.codec.decode(name, data, offset)[0]

    def encode_body(self, code: int, message_type: int, body: Any) -> bytes:
        """Encode the body of a message (empty bytes for messages without a body)."""
        name = self.body_type(code, message_type)
        if name is None:
            return b""
        return self.codec.encode(name, body)

    def new_body(self, code: int, message_type: int) -> Any:
        """A zero-valued body object for a message, or None when it has no body."""
        name = self.body_type(code, message_type)
        return self.codec.classes[name]() if name else None

    def error_name(self, code: int) -> str:
        return self.error_names.get(code, f"ERROR_{code}")


@cache
def protocol(version: int) -> Protocol:
    """The compiled protocol of one version (compiled once per process)."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"NDMP version {version} is not supported")
    return Protocol(version, protocol_dir() / f"ndmp{version}.x")
