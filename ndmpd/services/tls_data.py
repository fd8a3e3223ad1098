"""The ndmpd TLS data extension (class 0x2DD0 v1): which classes a session may select, and
NDMPD_TLS_DATA_PEER, which makes its TCP data connections TLS (protocol/ndmpd-tls-data.md).

A DMA that never selects the class gets plain data connections, as before."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import NdmpError
from ..mover.handoff import Handoff
from ..tls.data import EXTENSION_CLASS, EXTENSION_VERSION, DataTls
from ..wire import C, T
from . import HandlerTable

if TYPE_CHECKING:
    from ..session import Session

HANDLERS = HandlerTable()


def offered(session: "Session") -> dict[int, tuple[int, ...]]:
    """Extension class -> versions this session may select: TLS data needs tls_certificate."""
    if session.version < 4 or session.ctx.config.server.tls_certificate is None:
        return {}
    return {EXTENSION_CLASS: (EXTENSION_VERSION,)}


def select(session: "Session", selection: list[tuple[int, int]]) -> None:
    """Apply a CONFIG_SET_EXT_LIST selection whole, or raise the draft's error and change nothing."""
    classes = [class_id for class_id, _ in selection]
    if len(set(classes)) != len(classes):
        raise NdmpError(C.EXT_DUPL_CLASSES_ERR, "a class is selected twice")
    busy = idle_for_extensions(session)
    if busy is not None:
        raise NdmpError(C.EXT_DANDN_ILLEGAL_ERR, f"extensions are negotiated before data or mover activity ({busy})")
    available = offered(session)
    for class_id, version in selection:
        if class_id not in available:
            raise NdmpError(C.CLASS_NOT_SUPPORTED_ERR, f"extension class 0x{class_id:x} not supported")
        if version not in available[class_id]:
            raise NdmpError(C.VERSION_NOT_SUPPORTED_ERR,
                            f"extension class 0x{class_id:x} version {version} not supported")
    session.extensions = dict(selection)


def idle_for_extensions(session: "Session") -> str | None:
    """Why extensions cannot be negotiated or changed now (None: they can)."""
    from .data import IDLE as DATA_IDLE
    from .mover import IDLE as MOVER_IDLE
    if session.data.state != DATA_IDLE:
        return f"data state {session.data.state}"
    if session.mover.state != MOVER_IDLE:
        return f"mover state {session.mover.state}"
    return None


def for_tcp(session: "Session") -> DataTls | None:
    """The TLS a TCP data connection of this session must use (None: plain). With the class
    selected and no peer given, refuse (PRECONDITION_ERR) rather than fall back to plain."""
    if EXTENSION_CLASS not in session.extensions:
        return None
    if session.data_tls is None:
        raise NdmpError(C.PRECONDITION_ERR, "TLS data connections selected: NDMPD_TLS_DATA_PEER first")
    return session.data_tls


def handed(secure: DataTls | None, receiving: bool) -> tuple[DataTls | None, Handoff | None]:
    """For a TLS data connection, the Handoff a service exchanges its stream through with the
    relay (no socket pair copies): a mover receiving a backup takes from it, a data service
    hands its backup to it (a restore on that connection uses the plain socket). Plain TCP:
    (None, None)."""
    if secure is None:
        return None, None
    handoff = Handoff("the TLS data connection ended")
    return (secure.receiving_into(handoff) if receiving else secure.sending_from(handoff)), handoff


@HANDLERS.on(C.NDMPD_TLS_DATA_PEER)
def tls_data_peer(session: "Session", req: Any) -> Any:
    if EXTENSION_CLASS not in session.extensions:
        raise NdmpError(C.NOT_SUPPORTED_ERR, f"extension class 0x{EXTENSION_CLASS:x} not selected "
                                             "(CONFIG_SET_EXT_LIST)")
    busy = idle_for_extensions(session)
    if busy is not None:
        raise NdmpError(C.ILLEGAL_STATE_ERR, f"the data connection's peer is set while idle ({busy})")
    from ..tls.certs import CertificateError, certificate_der_of
    settings = session.ctx.config.server
    try:
        peer = certificate_der_of(bytes(req.peer_certificate))
        own = certificate_der_of(settings.tls_certificate.read_bytes())
        candidate = DataTls(settings.tls_certificate, settings.tls_key, peer)
        candidate.contexts()              # both sides' contexts build: a bad certificate fails here
    except (CertificateError, OSError, ValueError) as exc:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"peer certificate: {exc}") from None
    session.data_tls = candidate
    return T.ndmpd_tls_data_peer_reply(error=C.NO_ERR, certificate=own)
