"""The DMA's side of the ndmpd TLS data extension: make the data connection between two
servers TLS when both control connections are (both hosts say ``tls = true`` in ndmp.toml).

Each server is given the certificate the other presented on its control connection (which
the DMA verified against its CA or pin), so the two servers pin each other and nobody in
between sees the data. See protocol/ndmpd-tls-data.md."""

from __future__ import annotations

import sys

from ..tls.data import EXTENSION_CLASS, EXTENSION_VERSION
from ..wire import T
from .agent import Agent
from .errors import NdmpConnectError


async def secure_data_connection(a: Agent, b: Agent) -> bool:
    """Request TLS data connections between ``a`` and ``b`` when both control connections are
    TLS and both servers offer the extension; True when it is in force. One agent for both
    (LOCAL) or a plain control connection: nothing to do. A server that does not offer it:
    a warning, and the data connection stays plain."""
    if a is b or not (a.peer_certificate and b.peer_certificate):
        return False
    for agent in (a, b):
        if not await _offers(agent):
            print(f"ndmp: warning: {agent.peer} offers no TLS data connections (NDMPv4 and "
                  "server.tls_certificate needed); the data connection is plain TCP", file=sys.stderr)
            return False
    selection = [T.class_version(EXTENSION_CLASS, EXTENSION_VERSION)]
    for agent in (a, b):
        await agent.call("CONFIG_SET_EXT_LIST", ndmp4_accepted_ext=selection)
    for agent, peer in ((a, b), (b, a)):
        reply = await agent.call("NDMPD_TLS_DATA_PEER", peer_certificate=peer.peer_certificate)
        if bytes(reply.certificate) != agent.peer_certificate:
            raise NdmpConnectError(f"{agent.peer}: presents another certificate on data connections than on "
                                   "its control connection (reloaded meanwhile?); try again")
    return True


async def _offers(agent: Agent) -> bool:
    if agent.version < 4:
        return False
    listed = (await agent.call("CONFIG_GET_EXT_LIST")).class_list
    return any(c.class_id == EXTENSION_CLASS and EXTENSION_VERSION in c.class_version for c in listed)
