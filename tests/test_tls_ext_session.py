"""The ndmpd TLS data extension in the session: GET/SET_EXT_LIST negotiation and its errors,
NDMPD_TLS_DATA_PEER, and listen/connect refusing plain data connections once TLS is chosen."""

from __future__ import annotations

import pytest

from ndmpd.tls.certs import certificate_der
from ndmpd.tls.data import EXTENSION_CLASS, EXTENSION_VERSION
from ndmpd.wire import protocol

from .helpers import make_config, new_session
from .tls_helpers import pair

P4 = protocol(4)
C4, T4 = P4.const, P4.types
TLS = T4.class_version(EXTENSION_CLASS, EXTENSION_VERSION)


@pytest.fixture
def certs(tmp_path):
    return pair(tmp_path / "own"), pair(tmp_path / "peer")


@pytest.fixture
def config(tmp_path, certs):
    own = certs[0]
    return make_config(tmp_path, tls_certificate=str(own.certificate), tls_key=str(own.key))


def logged_in(config, version=4):
    session, dma = new_session(config)
    dma.version = version
    assert dma.call("CONNECT_OPEN", protocol_version=version).body.error == C4.NO_ERR
    auth = T4.auth_data(C4.AUTH_TEXT, auth_text=T4.auth_text("ndmp", "secret"))
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=auth).body.error == C4.NO_ERR
    return session, dma


def test_the_class_is_listed_only_with_a_certificate(tmp_path, config):
    _, dma = logged_in(config)
    (listed,) = dma.call("CONFIG_GET_EXT_LIST").body.class_list
    assert (listed.class_id, list(listed.class_version)) == (EXTENSION_CLASS, [EXTENSION_VERSION])
    (tmp_path / "plain").mkdir()
    _, plain = logged_in(make_config(tmp_path / "plain"))
    assert plain.call("CONFIG_GET_EXT_LIST").body.class_list == []
    assert plain.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=[TLS]).body.error == C4.CLASS_NOT_SUPPORTED_ERR


def test_set_ext_list_validates_the_whole_selection_before_applying_it(config):
    session, dma = logged_in(config)
    for selection, error in (([T4.class_version(0x2050, 1)], C4.CLASS_NOT_SUPPORTED_ERR),
                             ([TLS, T4.class_version(0x2050, 1)], C4.CLASS_NOT_SUPPORTED_ERR),
                             ([T4.class_version(EXTENSION_CLASS, 2)], C4.VERSION_NOT_SUPPORTED_ERR),
                             ([TLS, TLS], C4.EXT_DUPL_CLASSES_ERR)):
        assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=selection).body.error == error
        assert session.extensions == {} and not session.ext_list_set
    assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=[TLS]).body.error == C4.NO_ERR
    assert session.extensions == {EXTENSION_CLASS: EXTENSION_VERSION}
    assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=[TLS]).body.error == C4.EXT_DANDN_ILLEGAL_ERR


def test_negotiation_is_refused_once_the_data_service_is_busy(config):
    session, dma = logged_in(config)
    assert dma.call("DATA_LISTEN", addr_type=C4.ADDR_TCP).body.error == C4.NO_ERR
    assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=[TLS]).body.error == C4.EXT_DANDN_ILLEGAL_ERR
    assert session.extensions == {}
    dma.call("DATA_ABORT")
    dma.call("DATA_STOP")


def test_the_peer_message_needs_the_class_selected_and_a_real_certificate(config, certs):
    session, dma = logged_in(config)
    peer = certificate_der(certs[1].certificate)
    assert dma.call("NDMPD_TLS_DATA_PEER", peer_certificate=peer).body.error == C4.NOT_SUPPORTED_ERR
    assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=[TLS]).body.error == C4.NO_ERR
    assert dma.call("NDMPD_TLS_DATA_PEER", peer_certificate=b"junk").body.error == C4.ILLEGAL_ARGS_ERR
    assert session.data_tls is None
    reply = dma.call("NDMPD_TLS_DATA_PEER", peer_certificate=peer).body
    assert reply.error == C4.NO_ERR and bytes(reply.certificate) == certificate_der(certs[0].certificate)
    assert session.data_tls.peer == peer


def test_once_tls_is_chosen_no_plain_tcp_data_connection_is_made(config, certs):
    _, dma = logged_in(config)
    assert dma.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=[TLS]).body.error == C4.NO_ERR
    assert dma.call("DATA_LISTEN", addr_type=C4.ADDR_TCP).body.error == C4.PRECONDITION_ERR
    addr = T4.addr(addr_type=C4.ADDR_TCP, tcp_addr=[T4.tcp_addr(ip_addr=0x7F000001, port=9, addr_env=[])])
    assert dma.call("DATA_CONNECT", addr=addr).body.error == C4.PRECONDITION_ERR
    # LOCAL connections never leave the host: unaffected
    assert dma.call("DATA_LISTEN", addr_type=C4.ADDR_LOCAL).body.error == C4.NO_ERR


def test_the_message_does_not_exist_before_v4(config):
    _, dma = logged_in(config, version=3)
    (reply,) = dma.raw(dma.request_record(C4.NDMPD_TLS_DATA_PEER))
    assert reply.header.error_code == C4.NOT_SUPPORTED_ERR
    assert protocol(3).message(C4.NDMPD_TLS_DATA_PEER) is None
