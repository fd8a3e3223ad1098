"""A restore's own rules for what it hears (ndmpd/dma/jobs/recover.py): the stall check runs on
the progress samples, not on queued events (a quiet queue is how a missing NOTIFY post shows),
and a read taken from the data server's state is asked for once."""

from __future__ import annotations

from types import SimpleNamespace

from ndmpd.dma.catalog import Backup
from ndmpd.dma.jobs.recover import RecoverJob, RecoverRequest, _End, _Read


def job(stall_timeout: float = 3.0, direct: bool = True) -> RecoverJob:
    backup = Backup(id="b1", host="nas", volume="/export/data", butype="tar", level=0, started=0.0)
    return RecoverJob(object(), object(), RecoverRequest(backup, "vtape0", "/export/out", direct=direct,
                                                         stall_timeout=stall_timeout))


def drained(recover: RecoverJob) -> list[str]:
    kinds = []
    while not recover.events.empty():
        kinds.append(recover.events.get_nowait()[0])
    return kinds


def test_samples_that_move_are_no_events_and_a_stall_is_one():
    recover = job(stall_timeout=3.0)
    for second in range(10):                      # bytes moving every second: quiet queue
        recover._sampled(second * 1000, second * 1000, 100.0 + second)
    assert drained(recover) == []
    for second in range(10, 20):                  # nothing moves from 109 s on: stalled past 112 s, once
        recover._sampled(9000, 9000, 100.0 + second)
    assert drained(recover) == ["stalled"]
    end = recover._decide("stalled", None)
    assert isinstance(end, _End) and end.outcome == "failed"
    assert end.reason == "nothing moved for 3 s; the tape agent may not serve direct access reads: try --no-direct"
    assert job(direct=False)._decide("stalled", None).reason == "nothing moved for 3 s"


def test_a_read_from_the_state_is_new_only_when_it_is_not_the_last_one_asked():
    recover = job()
    read = SimpleNamespace(offset=1 << 20, length=65536)
    assert recover._decide("data_read_state", read) == _Read(1 << 20, 65536)
    recover.read_asked = (1 << 20, 65536)         # _wait_end sends it and remembers it
    assert recover._decide("data_read_state", read) is None
    assert recover._decide("data_read", read) == _Read(1 << 20, 65536)    # a post always stands
    read.offset = 2 << 20
    assert recover._decide("data_read_state", read) == _Read(2 << 20, 65536)
