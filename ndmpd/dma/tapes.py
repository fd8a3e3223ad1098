"""Tape drive operations a DMA does itself (status, rewind, eject, labels) on an Agent.

**The label format** (what ``ndmp tape label`` writes and every job reads back): the
cartridge's first tape file is one 512-byte record, ASCII, NUL-padded::

    NDMP-LABEL 1\\n
    name NAME\\n
    created 2026-12-02T03:55:00Z\\n

followed by a filemark, so backups start at tape file 1. ``NAME`` is 1-64 characters of
``[A-Za-z0-9_.+-]``. A tape whose first record does not start with ``NDMP-LABEL 1\\n`` is
unlabelled (blank, or data written by someone else).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from ..wire import C
from .errors import NdmpReplyError

MAGIC = b"NDMP-LABEL 1\n"
LABEL_RECORD = 512
READ_SIZE = 256 * 1024
LABEL_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
END_OF_DATA = (C.EOF_ERR, C.EOM_ERR)


class TapeError(Exception):
    """A tape request that cannot be done as asked (one line for the user)."""


async def open_drive(agent: Any, device: str, mode: int) -> None:
    """TAPE_OPEN of ``device``; a refusal names the drive (``TAPE_OPEN vtape9: NO_DEVICE_ERR``),
    so the user's one line says which one, and ends with the server's own reason when it sent
    one ahead of the reply (``TAPE_OPEN s3tape: IO_ERR: s3://...: wrong credentials``)."""
    said: list[str] = []
    start = f"TAPE_OPEN {device}: "

    def heard(body: Any) -> None:
        entry = str(getattr(body, "entry", ""))
        if entry.startswith(start):
            said.append(entry[len(start):])
    agent.on(C.LOG_MESSAGE, heard)
    try:
        await agent.call("TAPE_OPEN", device=device, mode=mode)
    except NdmpReplyError as exc:
        refused = NdmpReplyError(f"TAPE_OPEN {device}", exc.code, exc.header)
        await agent.delivered()                 # the reason is posted ahead of the reply
        if said:
            refused.args = (f"{refused}: {said[-1]}",)
        raise refused from None
    finally:
        agent.off(C.LOG_MESSAGE, heard)


@dataclass(frozen=True)
class Label:
    name: str
    created: str


@dataclass(frozen=True)
class Contents:
    """What the start of a cartridge holds."""

    label: Label | None
    has_data: bool           # a tape file beyond the label (or any data when unlabelled)

    @property
    def blank(self) -> bool:
        return self.label is None and not self.has_data


def label_record(name: str, now: float | None = None) -> bytes:
    if not LABEL_NAME.match(name):
        raise TapeError(f"label {name!r}: 1-64 characters of letters, digits and _ . + -")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    return (MAGIC + f"name {name}\ncreated {when}\n".encode()).ljust(LABEL_RECORD, b"\0")


def parse_label(record: bytes) -> Label | None:
    if not record.startswith(MAGIC):
        return None
    fields = dict(line.split(" ", 1) for line in record[len(MAGIC):].rstrip(b"\0").decode("ascii", "replace")
                  .splitlines() if " " in line)
    return Label(fields.get("name", ""), fields.get("created", ""))


async def mtio(agent: Any, op: int, count: int = 1) -> int:
    """One TAPE_MTIO; returns the residual count."""
    return int((await agent.call("TAPE_MTIO", tape_op=op, count=count)).resid_count)


async def read_record(agent: Any) -> bytes | None:
    """The next record, or None at a filemark / end of data."""
    try:
        return bytes((await agent.call("TAPE_READ", count=READ_SIZE)).data_in)
    except NdmpReplyError as exc:
        if exc.code in END_OF_DATA:
            return None
        raise


async def contents(agent: Any) -> Contents:
    """Rewind and look: the label (if any) and whether data follows. Leaves the tape rewound."""
    await mtio(agent, C.MTIO_REW)
    first = await read_record(agent)
    label = parse_label(first) if first is not None else None
    if label is None:
        await mtio(agent, C.MTIO_REW)
        return Contents(None, first is not None)
    await mtio(agent, C.MTIO_REW)
    await mtio(agent, C.MTIO_FSF, 1)
    after = await read_record(agent)
    await mtio(agent, C.MTIO_REW)
    return Contents(label, after is not None)


async def write_label(agent: Any, name: str) -> Label:
    """Rewind, write the label file (record + filemark), and rewind again."""
    record = label_record(name)
    await mtio(agent, C.MTIO_REW)
    await agent.call("TAPE_WRITE", data_out=record)
    await mtio(agent, C.MTIO_EOF, 1)
    await mtio(agent, C.MTIO_REW)
    label = parse_label(record)
    assert label is not None
    return label


async def to_file(agent: Any, file_number: int | None) -> None:
    """The head at the start of tape file ``file_number`` (counted from 0): rewind, then space
    forward that many filemarks."""
    await mtio(agent, C.MTIO_REW)
    if file_number:
        await mtio(agent, C.MTIO_FSF, file_number)


async def position_for_writing(agent: Any, label: Label | None) -> int:
    """Rewind and step past the label: the tape file number a new image starts at."""
    first = 0 if label is None else 1
    await to_file(agent, first)
    return first


SPACE_ALL = 0x7FFFFFFF                   # an MTIO count past any tape's number of files


async def position_at_end_of_data(agent: Any) -> int:
    """Rewind and space past every tape file: the file number a new image starts at, so a
    backup appends and never writes over the images the catalog knows. A last file cut
    short (a backup that died before its filemark) gets its filemark first, so the new image
    is a file of its own."""
    await mtio(agent, C.MTIO_REW)
    try:
        files: int | None = SPACE_ALL - await mtio(agent, C.MTIO_FSF, SPACE_ALL)
    except NdmpReplyError as exc:            # agents that answer end of data with an error
        if exc.code not in END_OF_DATA:
            raise
        files = None
    state = await status(agent)
    if files is None:
        files = state["file_num"] or 0
    if state["blockno"]:                     # records after the last filemark
        await mtio(agent, C.MTIO_EOF, 1)
        files += 1
    return files


async def status(agent: Any) -> dict[str, Any]:
    """TAPE_GET_STATE as a plain dict (fields the server says it does not support are None)."""
    s = await agent.call("TAPE_GET_STATE")
    uns = int(getattr(s, "unsupported", 0))

    def field(name: str, bit: int) -> Any:
        return None if uns & bit else int(getattr(s, name))
    return {"file_num": field("file_num", C.TAPE_STATE_FILE_NUM_UNS),
            "blockno": field("blockno", C.TAPE_STATE_BLOCKNO_UNS),
            "block_size": field("block_size", C.TAPE_STATE_BLOCK_SIZE_UNS),
            "total_space": field("total_space", C.TAPE_STATE_TOTAL_SPACE_UNS),
            "space_remain": field("space_remain", C.TAPE_STATE_SPACE_REMAIN_UNS),
            "soft_errors": field("soft_errors", C.TAPE_STATE_SOFT_ERRORS_UNS),
            "write_protected": bool(int(s.flags) & C.TAPE_STATE_WR_PROT)}
