"""Hostile input to a whole session: random bytes and mutated valid records.

The session must never raise, never buffer beyond its record limit, and answer every
complete request with a well-formed reply (a header error or a body) or close cleanly.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ndmpd.context import ServerContext
from ndmpd.session import Session
from ndmpd.wire.records import RecordReader, frame

from .helpers import make_config
from .test_codec import VECTORS

REQUESTS = [record for _, _, kind, record in VECTORS if kind == "request"]
MAX_RECORD = 65536


def check_output(session: Session) -> None:
    for record in RecordReader(1 << 24).feed(session.data_to_send()):
        assert len(record) >= 24
        seq, ts, mtype, code, rseq, err = struct.unpack_from(">IIiiIi", record)
        assert mtype in (0, 1) and 0 <= err <= 30 and ts > 0


def fresh_session(tmp_path_factory) -> Session:
    config = make_config(tmp_path_factory.mktemp("fuzz"), max_record_size=MAX_RECORD, auth=["none", "text"])
    session = Session(ServerContext(config), "fuzz")
    session.greet()
    session.authenticated = True            # reach the post-auth handlers too
    return session


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=4096), max_size=8))
def test_random_bytes_never_crash_the_session(tmp_path_factory, chunks):
    session = fresh_session(tmp_path_factory)
    for chunk in chunks:
        session.receive_data(chunk)
        assert session.buffered <= MAX_RECORD + 4096 + 24
    check_output(session)


@st.composite
def mutated_record(draw):
    record = bytearray(draw(st.sampled_from(REQUESTS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "word"]))
        if op == "flip" and record:
            i = draw(st.integers(0, len(record) - 1))
            record[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del record[draw(st.integers(0, len(record))):]
        elif op == "extend":
            record += draw(st.binary(max_size=64))
        elif op == "word" and len(record) >= 4:
            i = draw(st.integers(0, len(record) // 4 - 1)) * 4
            record[i:i + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000])))
    return bytes(record)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutated_record(), min_size=1, max_size=6))
def test_mutated_valid_records_always_get_an_ndmp_answer(tmp_path_factory, records):
    session = fresh_session(tmp_path_factory)
    session.data_to_send()
    for record in records:
        if session.closed:
            break
        session.receive_data(frame(record))
        out = RecordReader(1 << 24).feed(session.data_to_send())
        if session.closed:
            continue
        if len(record) >= 24:
            mtype, code = struct.unpack_from(">ii", record, 8)
            if mtype == 0 and code not in (0x902,):
                # every request is answered exactly once, echoing its sequence number
                replies = [r for r in out if struct.unpack_from(">i", r, 8)[0] == 1]
                assert len(replies) == 1
                assert struct.unpack_from(">I", replies[0], 16)[0] == struct.unpack_from(">I", record, 0)[0]
