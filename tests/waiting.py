"""Bounded waits for tests: poll for the condition a test needs, never sleep a fixed time.

A fixed sleep is a guess at how long the machine takes; on a loaded 2-core CI machine the
guess is wrong one run in twenty. Polling with a generous deadline is as fast as the machine
allows and fails only when the condition really never comes.
"""

from __future__ import annotations

import time
from typing import Callable


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
