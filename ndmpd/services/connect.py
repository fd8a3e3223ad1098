"""CONNECT interface: version negotiation, client authentication (TEXT, MD5, NONE), close."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

from ..errors import HeaderError, NdmpError
from ..logtext import peer_text
from ..wire import C, SUPPORTED_VERSIONS, T
from ..wire.auth import md5_digest
from . import Blocking, HandlerTable

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger("ndmpd.connect")
HANDLERS = HandlerTable()
AUTH_CODES = {"none": C.AUTH_NONE, "text": C.AUTH_TEXT, "md5": C.AUTH_MD5}


def allowed_auth_types(session: "Session") -> list[int]:
    """The auth types the configuration allows, as NDMP enum values, in configured order."""
    return [AUTH_CODES[m] for m in session.ctx.config.server.auth]


@HANDLERS.on(C.CONNECT_OPEN, pre_auth=True)
def connect_open(session: "Session", req: Any) -> Any:
    version = req.protocol_version
    if version not in SUPPORTED_VERSIONS or version > session.offered_version:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"version {version} not offered")
    if session.version_locked and version != session.version:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"version {session.version} already in force")
    session.version_locked = True
    log.info("%s: NDMPv%d", session.peer, version)
    session.after_reply(lambda: session.set_version(version))
    return T.connect_open_reply(C.NO_ERR)


def _password_of(session: "Session", user: str) -> tuple[bytes, bool]:
    """The user's password, or a dummy (so unknown users cost the same time) and False."""
    entry = session.ctx.config.user(user)
    if entry is None:
        return b"\0" * 16, False
    return entry.password.encode("utf-8"), True


@HANDLERS.on(C.CONNECT_CLIENT_AUTH, pre_auth=True)
def connect_client_auth(session: "Session", req: Any) -> Any:
    data = req.auth_data
    kind = data.auth_type
    if kind not in AUTH_CODES.values():
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"unknown auth type {kind}")
    if kind not in allowed_auth_types(session):
        _failed(session, f"auth type {kind} not enabled")
    if kind == C.AUTH_NONE:
        return _check(session, data)
    user = data.auth_text.auth_id if kind == C.AUTH_TEXT else data.auth_md5.auth_id
    guard = session.ctx.guard
    host = guard.host(session)
    if host is None:                    # not admitted by a server (a sans-IO test): nothing to throttle
        return _check(session, data)
    reservation = guard.throttle.reserve(("address", host), guard.throttle.account(user),
                                         max(0.0, guard.login_time_left(session)))
    if reservation is None:
        _failed(session, f"too many failed logins; retry later "
                         f"(server.auth_failure_rate = {session.ctx.config.server.auth_failure_rate:g})")

    def attempt() -> Any:
        reply = _check(session, data)
        guard.throttle.refund(reservation)
        return reply
    wait = reservation.wait
    if not wait:
        return attempt()
    log.info("%s: login throttled %.1f s", session.peer, wait)

    def wait_then_attempt() -> Any:     # on the session's worker: the reply waits, not the event loop
        if not guard.hold(session, wait):
            raise NdmpError(C.NOT_AUTHORIZED_ERR, "connection closed while throttled")
        return attempt()
    return Blocking(wait_then_attempt)


def _check(session: "Session", data: Any) -> Any:
    """Verify the credentials; a success takes a session slot."""
    kind = data.auth_type
    if kind == C.AUTH_NONE:
        ok, user = True, ""
    elif kind == C.AUTH_TEXT:
        user = data.auth_text.auth_id
        password, known = _password_of(session, user)
        given = data.auth_text.auth_password.encode("utf-8", "surrogateescape")
        ok = hmac.compare_digest(password, given) and known
    else:
        user = data.auth_md5.auth_id
        challenge, session.md5_challenge = session.md5_challenge, None
        if challenge is None:
            _failed(session, "MD5 without a challenge (CONFIG_GET_AUTH_ATTR first)")
        password, known = _password_of(session, user)
        ok = hmac.compare_digest(md5_digest(password, challenge), bytes(data.auth_md5.auth_digest)) and known
    if not ok:
        _failed(session, f"wrong credentials for user {user!r}")
    full = session.ctx.guard.authenticate(session)
    if full:
        log.warning("%s: refused: %s", session.peer, full)
        session.after_reply(lambda: session.shutdown(full))
        raise NdmpError(C.NOT_AUTHORIZED_ERR, full)
    session.authenticated = True
    session.auth_user = user
    log.info("%s: authenticated%s", session.peer, f" as '{peer_text(user)}'" if user else " (none)")
    return T.connect_client_auth_reply(C.NO_ERR)


def _failed(session: "Session", why: str) -> None:
    session.authenticated = False
    session.auth_failures += 1
    log.warning("%s: authentication refused: %s", session.peer, peer_text(why))
    if session.auth_failures >= session.max_auth_failures:
        log.warning("%s: %d failed authentications, closing", session.peer, session.auth_failures)
        session.after_reply(session.shutdown)
    raise NdmpError(C.NOT_AUTHORIZED_ERR, why)


@HANDLERS.on(C.CONNECT_SERVER_AUTH)
def connect_server_auth(session: "Session", req: Any) -> Any:
    # Proving the server's identity would mean sending a stored secret; like the reference
    # implementations we decline rather than invent a server password.
    raise HeaderError(C.NOT_SUPPORTED_ERR)
