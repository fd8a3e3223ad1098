"""Protocol errors as exceptions, turned into replies in one place (the session)."""

from __future__ import annotations


class NdmpError(Exception):
    """The request failed: the reply carries ``code`` in its body ``error`` field."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"NDMP error {code}")
        self.code = code
        self.message = message


class HeaderError(Exception):
    """The request could not be processed at all: a header-only reply with ``code``."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"NDMP header error {code}")
        self.code = code
        self.message = message
