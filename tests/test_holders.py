"""A device held by a session whose connection has closed is handed over, not refused."""

import threading
import time

import pytest

from ndmpd.devices.holders import Holders
from ndmpd.devices.tape import DeviceBusy


class Owner:
    def __init__(self, closed: bool = False) -> None:
        self.closed = closed


def test_live_holder_refuses_at_once():
    holders = Holders()
    holders.claim("vtape0", Owner())
    started = time.monotonic()
    with pytest.raises(DeviceBusy):
        holders.claim("vtape0", Owner(), patience=5)
    assert time.monotonic() - started < 1


def test_closed_holder_is_waited_for_until_its_teardown_lets_go():
    holders, old, new = Holders(), Owner(), Owner()
    holders.claim("vtape0", old)
    old.closed = True
    threading.Timer(0.3, holders.let_go, ("vtape0", old)).start()
    holders.claim("vtape0", new, patience=5)
    assert holders.holder("vtape0") is new


def test_closed_holder_that_never_lets_go_is_busy_after_the_patience():
    holders = Holders()
    holders.claim("vtape0", Owner(closed=True))
    started = time.monotonic()
    with pytest.raises(DeviceBusy):
        holders.claim("vtape0", Owner(), patience=0.3)
    assert 0.25 < time.monotonic() - started < 2
