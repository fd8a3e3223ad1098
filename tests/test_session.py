"""The sans-IO session: negotiation, authentication, pre-auth rules, header errors, CONFIG."""

from __future__ import annotations

import hashlib

import pytest

from ndmpd.context import Butype
from ndmpd.wire.auth import md5_digest
from ndmpd.wire import protocol
from ndmpd.wire.message import Header

from .helpers import FakeDma, make_config, new_session

T4 = protocol(4).types
C4 = protocol(4).const


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


def login_text(dma: FakeDma, user="ndmp", password="secret"):
    auth = T4.auth_data(C4.AUTH_TEXT, auth_text=T4.auth_text(user, password))
    return dma.call("CONNECT_CLIENT_AUTH", auth_data=auth)


def test_greeting_offers_highest_version_with_real_timestamp(config):
    session, dma = new_session(config, clock=lambda: 1764000000.5)
    greeting = dma.received[0]
    assert greeting.body.reason == C4.CONNECTED and greeting.body.protocol_version == 4
    assert greeting.header.time_stamp == 1764000000 and greeting.header.sequence == 1


def test_connect_open_negotiates_then_refuses_a_different_version(config):
    session, dma = new_session(config)
    assert dma.call("CONNECT_OPEN", protocol_version=3).body.error == C4.NO_ERR
    assert session.version == 3
    dma.version = 3
    assert dma.call("CONNECT_OPEN", protocol_version=4).body.error == C4.ILLEGAL_ARGS_ERR
    assert dma.call("CONNECT_OPEN", protocol_version=3).body.error == C4.NO_ERR


def test_unsupported_version_is_illegal_args(config):
    session, dma = new_session(config)
    assert dma.call("CONNECT_OPEN", protocol_version=5).body.error == C4.ILLEGAL_ARGS_ERR
    assert dma.call("CONNECT_OPEN", protocol_version=1).body.error == C4.ILLEGAL_ARGS_ERR


def test_text_auth_accepts_right_password_and_refuses_wrong_one(config):
    session, dma = new_session(config)
    assert login_text(dma, password="wrong").body.error == C4.NOT_AUTHORIZED_ERR
    assert not session.authenticated
    assert login_text(dma, user="nobody").body.error == C4.NOT_AUTHORIZED_ERR
    assert login_text(dma).body.error == C4.NO_ERR
    assert session.authenticated


def test_md5_auth_uses_a_fresh_challenge_each_time(config):
    session, dma = new_session(config)
    first = dma.call("CONFIG_GET_AUTH_ATTR", auth_type=C4.AUTH_MD5).body.server_attr.challenge
    second = dma.call("CONFIG_GET_AUTH_ATTR", auth_type=C4.AUTH_MD5).body.server_attr.challenge
    assert len(first) == 64 and first != second
    stale = T4.auth_data(C4.AUTH_MD5, auth_md5=T4.auth_md5("ndmp", md5_digest(b"secret", first)))
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=stale).body.error == C4.NOT_AUTHORIZED_ERR
    challenge = dma.call("CONFIG_GET_AUTH_ATTR", auth_type=C4.AUTH_MD5).body.server_attr.challenge
    good = T4.auth_data(C4.AUTH_MD5, auth_md5=T4.auth_md5("ndmp", md5_digest(b"secret", challenge)))
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=good).body.error == C4.NO_ERR


def test_md5_digest_matches_the_reference_layout():
    challenge = bytes(range(64))
    assert md5_digest(b"secret", challenge).hex() == "70a332cc22e42742ea3fe70e383273c9"
    expected = hashlib.md5(b"ndmp" + bytes(56) + challenge + b"ndmp").digest()
    assert md5_digest(b"ndmp", challenge) == expected


def test_md5_without_challenge_is_refused(config):
    session, dma = new_session(config)
    auth = T4.auth_data(C4.AUTH_MD5, auth_md5=T4.auth_md5("ndmp", bytes(16)))
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=auth).body.error == C4.NOT_AUTHORIZED_ERR


def test_auth_none_only_when_configured(tmp_path):
    session, dma = new_session(make_config(tmp_path))
    none = T4.auth_data(C4.AUTH_NONE)
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=none).body.error == C4.NOT_AUTHORIZED_ERR
    session, dma = new_session(make_config(tmp_path, auth=["none", "md5"]))
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=none).body.error == C4.NO_ERR


def test_repeated_auth_failures_close_the_session(config):
    session, dma = new_session(config)
    for _ in range(3):
        login_text(dma, password="bad")
    assert session.closed
    assert dma.received[-1].header.message_code == 0x502 and dma.received[-1].body.reason == C4.SHUTDOWN


def test_server_info_answers_before_auth_but_host_info_does_not(config):
    session, dma = new_session(config)
    info = dma.call("CONFIG_GET_SERVER_INFO")
    assert info.body.product_name == "ndmpd" and info.body.auth_type == [C4.AUTH_MD5, C4.AUTH_TEXT]
    refused = dma.call("CONFIG_GET_HOST_INFO")
    assert refused.header.error_code == C4.NOT_AUTHORIZED_ERR and refused.body is None
    login_text(dma)
    assert dma.call("CONFIG_GET_HOST_INFO").body.hostname


def test_unknown_and_version_illegal_codes_get_not_supported_and_session_goes_on(config):
    session, dma = new_session(config)
    dma.version = 3
    dma.call("CONNECT_OPEN", protocol_version=3)
    login_text(dma)
    for code in (0x12345, 0x109, 0x20500100, 0x502, 0x703):   # unknown, v4-only, extension, posts
        (reply,) = dma.raw(dma.request_record(code))
        assert reply.header.error_code == C4.NOT_SUPPORTED_ERR
        assert reply.header.message_code == code and reply.header.reply_sequence == dma.seq
    assert dma.call("CONFIG_GET_HOST_INFO").body.error == C4.NO_ERR


def test_undecodable_body_gets_xdr_decode_error_and_session_goes_on(config):
    session, dma = new_session(config)
    truncated = Header(1, 1700000000, 0, 0x900, 0, 0).pack() + b"\x00\x00"
    (reply,) = dma.raw(truncated)
    assert reply.header.error_code == C4.XDR_DECODE_ERR
    (reply,) = dma.raw(Header(2, 1700000000, 0, 0x901, 0, 0).pack() + bytes.fromhex("00000009"))
    assert reply.header.error_code == C4.XDR_DECODE_ERR
    (short,) = dma.raw(b"\x00\x00\x00\x07")
    assert short.header.error_code == C4.XDR_DECODE_ERR
    assert login_text(dma).body.error == C4.NO_ERR


def test_sequence_numbers_increase_per_direction_and_replies_echo_the_request(config):
    session, dma = new_session(config)
    dma.call("CONFIG_GET_SERVER_INFO")
    dma.call("CONFIG_GET_SERVER_INFO")
    seqs = [m.header.sequence for m in dma.received]
    assert seqs == [1, 2, 3]
    assert [m.header.reply_sequence for m in dma.received[1:]] == [1, 2]


def test_connect_close_ends_the_session_without_reply(config):
    session, dma = new_session(config)
    assert dma.raw(dma.request_record(0x902)) == []
    assert session.closed


def test_oversized_request_gets_illegal_args_and_session_goes_on(tmp_path):
    session, dma = new_session(make_config(tmp_path, max_record_size="64KiB"))
    login_text(dma)
    big = dma.request_record(0x304, T4.tape_write_request(data_out=bytes(100000)))
    (reply,) = dma.raw(big)
    assert reply.header.error_code == 0 and reply.body.error == C4.ILLEGAL_ARGS_ERR
    assert dma.call("CONFIG_GET_SERVER_INFO").body.error == C4.NO_ERR


def test_oversized_request_of_an_unknown_code_is_refused_not_supported_as_any_size(tmp_path):
    """The DMA waits for a reply to every request: an oversized one of a code this version
    does not have (0x203, SCSI_SET_TARGET, left NDMPv4) gets the header error a short one gets."""
    session, dma = new_session(make_config(tmp_path, max_record_size="64KiB"))
    login_text(dma)
    for size in (8, 100000):
        (reply,) = dma.raw(dma.request_record(0x203) + bytes(size))
        assert reply.header.error_code == C4.NOT_SUPPORTED_ERR
    assert dma.call("CONFIG_GET_SERVER_INFO").body.error == C4.NO_ERR


def test_fs_info_reports_each_volume_with_statvfs_figures(config):
    session, dma = new_session(config)
    login_text(dma)
    (fs,) = dma.call("CONFIG_GET_FS_INFO").body.fs_info
    assert fs.fs_logical_device == "/export/data" and fs.fs_status == "online"
    assert fs.unsupported == 0 and 0 < fs.avail_size <= fs.total_size and fs.total_inodes > 0
    assert {(e.name, e.value) for e in fs.fs_env} >= {("LOCAL_NAME", str(config.volumes[0].path))}


def test_tape_info_lists_configured_drives(config):
    session, dma = new_session(config)
    login_text(dma)
    (tape,) = dma.call("CONFIG_GET_TAPE_INFO").body.tape_info
    assert tape.caplist[0].device == "vtape0"
    assert dma.call("CONFIG_GET_SCSI_INFO").body.scsi_info == []


def test_butype_info_is_what_the_data_service_registered(config):
    tar = Butype("tar", (("HIST", "y"),), 0x2, 0x4)
    session, dma = new_session(config, butypes=(tar,))
    login_text(dma)
    (info,) = dma.call("CONFIG_GET_BUTYPE_INFO").body.butype_info
    assert info.butype_name == "tar" and info.attrs == 0x2 and info.default_env[0].name == "HIST"


def test_v2_host_info_lists_auth_types_and_butype_attr_is_v2_only(tmp_path):
    tar = Butype("tar", (), 0, 0x4)
    session, dma = new_session(make_config(tmp_path), butypes=(tar,))
    dma.version = 2
    dma.call("CONNECT_OPEN", protocol_version=2)
    login_text(dma)
    host = dma.call("CONFIG_GET_HOST_INFO").body
    assert host.auth_type == [C4.AUTH_MD5, C4.AUTH_TEXT]
    assert dma.call("CONFIG_GET_BUTYPE_ATTR", name="tar").body.attrs == 0x4
    assert dma.call("CONFIG_GET_BUTYPE_ATTR", name="cpio").body.error == C4.ILLEGAL_ARGS_ERR
    assert dma.call("CONFIG_GET_MOVER_TYPE").body.addr_types == [0, 1]


def test_ext_list_is_empty_and_negotiation_happens_once(config):
    session, dma = new_session(config)
    login_text(dma)
    assert dma.call("CONFIG_GET_EXT_LIST").body.class_list == []
    pick = [T4.class_version(0x2050, 1)]
    assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=pick).body.error == C4.CLASS_NOT_SUPPORTED_ERR
    twice = [T4.class_version(0x2050, 1)] * 2
    assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=twice).body.error == C4.EXT_DUPL_CLASSES_ERR
    assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=[]).body.error == C4.NO_ERR
    assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=[]).body.error == C4.EXT_DANDN_ILLEGAL_ERR


def test_server_auth_is_declined_with_not_supported(config):
    session, dma = new_session(config)
    login_text(dma)
    reply = dma.call("CONNECT_SERVER_AUTH", client_attr=T4.auth_attr(C4.AUTH_TEXT))
    assert reply.header.error_code == C4.NOT_SUPPORTED_ERR
