"""SCSI status and fixed-format sense data: how a changer says what went wrong."""

from __future__ import annotations

from dataclasses import dataclass

GOOD = 0x00
CHECK_CONDITION = 0x02

NO_SENSE, NOT_READY, ILLEGAL_REQUEST, UNIT_ATTENTION = 0x0, 0x2, 0x5, 0x6


@dataclass(frozen=True)
class Sense:
    key: int
    asc: int
    ascq: int
    text: str

    def data(self) -> bytes:
        """Fixed-format sense data (response code 70h), 18 bytes."""
        return bytes([0x70, 0, self.key, 0, 0, 0, 0, 10, 0, 0, 0, 0, self.asc, self.ascq, 0, 0, 0, 0])


INVALID_OPCODE = Sense(ILLEGAL_REQUEST, 0x20, 0x00, "invalid command operation code")
INVALID_FIELD = Sense(ILLEGAL_REQUEST, 0x24, 0x00, "invalid field in CDB")
INVALID_ELEMENT = Sense(ILLEGAL_REQUEST, 0x21, 0x01, "invalid element address")
DESTINATION_FULL = Sense(ILLEGAL_REQUEST, 0x3B, 0x0D, "medium destination element full")
SOURCE_EMPTY = Sense(ILLEGAL_REQUEST, 0x3B, 0x0E, "medium source element empty")
REMOVAL_PREVENTED = Sense(ILLEGAL_REQUEST, 0x53, 0x02, "medium removal prevented")
PARAMETER_LENGTH = Sense(ILLEGAL_REQUEST, 0x1A, 0x00, "parameter list length error")
NO_ADDITIONAL = Sense(NO_SENSE, 0x00, 0x00, "no additional sense information")
NOT_READY_CAUSE_UNKNOWN = Sense(NOT_READY, 0x04, 0x00, "logical unit not ready")   # its store is unreachable


class CheckCondition(Exception):
    """A command ends with CHECK CONDITION and this sense."""

    def __init__(self, sense: Sense, detail: str = "") -> None:
        super().__init__(f"{sense.text}{': ' + detail if detail else ''}")
        self.sense = sense


@dataclass(frozen=True)
class CdbResult:
    """What EXECUTE_CDB answers: status, data in, sense (empty when GOOD)."""

    status: int
    data_in: bytes = b""
    sense: bytes = b""
    data_out_used: int = 0
