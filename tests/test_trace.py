"""``--log-level debug`` traces every request, reply and post; secrets never; nothing at info."""

from __future__ import annotations

import logging

from ndmpd import trace
from ndmpd.wire.auth import md5_digest
from ndmpd.wire import protocol

from .helpers import make_config, new_session

P4 = protocol(4)
T4, C4 = P4.types, P4.const


def trace_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ndmpd.trace"]


def test_debug_traces_each_request_and_reply_with_sequence_error_and_body(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ndmpd")
    session, dma = new_session(make_config(tmp_path, auth=["text", "md5"]))
    dma.call("CONNECT_OPEN", protocol_version=4)
    auth = T4.auth_data(C4.AUTH_TEXT, auth_text=T4.auth_text("ndmp", "secret"))
    open_seq = dma.seq
    dma.call("CONNECT_CLIENT_AUTH", auth_data=auth)
    reply = dma.call("TAPE_OPEN", device="nosuch\n", mode=C4.TAPE_READ_MODE)
    lines = trace_lines(caplog)
    assert any("post NOTIFY_CONNECTION_STATUS" in line and "reason=" in line for line in lines)
    assert any(f"> {open_seq} CONNECT_OPEN" in line and "protocol_version=4" in line for line in lines)
    assert any(f"re {open_seq} CONNECT_OPEN NO_ERR" in line for line in lines)
    tape = [line for line in lines if "TAPE_OPEN" in line]
    assert len(tape) == 2 and '"nosuch\\n"' in tape[0]
    assert f"< {reply.header.sequence} re {dma.seq} TAPE_OPEN NO_DEVICE_ERR" in tape[1]
    assert not any("secret" in line for line in lines)
    assert all("\n" not in line and len(line) < 1024 for line in lines)


def test_header_errors_are_traced_too(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ndmpd")
    session, dma = new_session(make_config(tmp_path))
    reply = dma.call("CONFIG_GET_HOST_INFO")      # before authentication
    assert reply.header.error_code == C4.NOT_AUTHORIZED_ERR
    assert any("CONFIG_GET_HOST_INFO" in line and "NOT_AUTHORIZED_ERR" in line for line in trace_lines(caplog))


def test_md5_challenge_and_digest_never_reach_the_trace(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ndmpd")
    session, dma = new_session(make_config(tmp_path, auth=["md5"]))
    challenge = bytes(dma.call("CONFIG_GET_AUTH_ATTR", auth_type=C4.AUTH_MD5).body.server_attr.challenge)
    digest = md5_digest(b"secret", challenge)
    auth = T4.auth_data(C4.AUTH_MD5, auth_md5=T4.auth_md5("ndmp", digest))
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=auth).body.error == C4.NO_ERR
    text = "\n".join(trace_lines(caplog))
    assert "CONNECT_CLIENT_AUTH" in text and "<redacted>" in text
    for secret in (digest, challenge):
        assert secret.hex() not in text and repr(secret)[2:20] not in text


def test_huge_bodies_give_a_short_summary():
    body = T4.data_start_backup_request(
        butype_name="tar" * 1000,
        env=[T4.pval(f"NAME{i}", "v" * 100_000) for i in range(10_000)] + [T4.pval("PASSWORD", "hunter2")])
    text = trace.summary(body)
    assert len(text) <= trace.SUMMARY_LIMIT + 4 and "[3000 chars]" in text
    many = trace.summary(T4.data_start_backup_request(env=[T4.pval(f"N{i}", "v") for i in range(10_000)]))
    assert "+9996 more" in many
    assert "hunter2" not in trace.summary(T4.data_start_backup_request(env=[T4.pval("PASSWORD", "hunter2")]))


def test_info_level_does_no_trace_work(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="ndmpd")

    def boom(*args, **kwargs):
        raise AssertionError("trace formatting at info level")
    for name in ("summary", "request", "reply", "post", "refused"):
        monkeypatch.setattr(trace, name, boom)
    session, dma = new_session(make_config(tmp_path, auth=["text"]))
    auth = T4.auth_data(C4.AUTH_TEXT, auth_text=T4.auth_text("ndmp", "secret"))
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=auth).body.error == C4.NO_ERR
    assert dma.call("CONFIG_GET_HOST_INFO").body.error == C4.NO_ERR
    assert dma.call("TAPE_OPEN", device="x", mode=0).body.error == C4.NO_DEVICE_ERR
    assert not trace_lines(caplog)


def test_posts_are_traced_with_their_body_but_file_history_by_name_only(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ndmpd")
    session, dma = new_session(make_config(tmp_path))
    session.data.log_message("cannot restore /vol/a\nb")
    session.post_encoded(C4.FH_ADD_FILE, b"\x00\x00\x00\x00")
    lines = trace_lines(caplog)
    log_post = [line for line in lines if "post LOG_MESSAGE" in line]
    assert len(log_post) == 1 and 'entry="cannot restore /vol/a\\nb"' in log_post[0]
    fh = [line for line in lines if "FH_ADD_FILE" in line]
    assert len(fh) == 1 and fh[0].rstrip().endswith("post FH_ADD_FILE")
