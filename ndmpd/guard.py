"""Who may hold a control connection, and for how long: login slots, session slots, login throttling.

Unauthenticated connections live in their own small pool (per address and in all) so that any
number of idle or slow peers can never take the ``max_sessions`` slots that authenticated DMAs
use; failed logins are rate-limited per address and per user across connections. Pure
bookkeeping: the server asks, and does the closing itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable

from .config import ServerSettings

USER_SLOTS = 4096               # user names are counted in this many buckets (bounded memory)
MAX_ADDRESSES = 16384           # address buckets kept; past this the least recently seen is forgotten
JOB_LOOK = 1.0                  # seconds between looks at a session whose job runs


def address_key(host: str) -> str:
    """What one peer is counted as: its IPv4 address, or its IPv6 /64 (a single host usually has
    the whole /64, so counting addresses there would cap nothing)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 4 or ip.is_loopback:
        return host
    if ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass(frozen=True)
class Attempt:
    """One login attempt's reservation: how long it waits, and the buckets it took a token from
    (``user`` None: the user's was left alone)."""

    wait: float
    address: Hashable
    user: Hashable | None


class AuthThrottle:
    """A token bucket per address and per user: ``burst`` attempts at once, then ``rate`` per minute.

    Every attempt takes a token from its address's bucket *before* the credentials are checked (so
    a short client timeout learns nothing); an empty bucket means waiting for the next token, which
    parallel attempts reserve one after another, so the delay grows with the guessing. The user's
    bucket counts the guesses at that user from every address, and holds up attempts from
    addresses that have failed lately; an address with no recent failure (its bucket full) is not
    held up by it, only uses up its free attempts: guessing elsewhere must never lock the
    account's owner out. A success gives its tokens back: a DMA that logs in correctly is never
    slowed.
    """

    def __init__(self, rate_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._addresses: OrderedDict[Hashable, _Bucket] = OrderedDict()    # least recently seen first
        self._users: dict[Hashable, _Bucket] = {}       # at most USER_SLOTS keys (see account)
        self._lock = threading.Lock()
        self._salt = secrets.token_bytes(16)

    def account(self, name: str) -> Hashable:
        """The bucket of user ``name``, configured or not: every name is counted alike, so how
        long an attempt waits never tells whether a user exists; a keyed hash into
        :data:`USER_SLOTS` buckets bounds the memory any number of names can take."""
        digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), key=self._salt, digest_size=8).digest()
        return ("user", int.from_bytes(digest, "big") % USER_SLOTS)

    def _bucket(self, table: dict[Hashable, _Bucket], key: Hashable, now: float) -> _Bucket:
        bucket = table.get(key)
        if bucket is None:
            bucket = table[key] = _Bucket(self.burst, now)
            if table is self._addresses and len(table) > MAX_ADDRESSES:
                self._addresses.popitem(last=False)     # O(1) however many addresses a flood uses
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if table is self._addresses:
                self._addresses.move_to_end(key)
        return bucket

    def reserve(self, address: Hashable, user: Hashable, limit: float) -> Attempt | None:
        """Reserve one attempt from ``address`` at ``user``: the seconds to wait first and the
        tokens taken, or None (nothing taken) when the wait would exceed ``limit``."""
        with self._lock:
            now = self.clock()
            own, account = self._bucket(self._addresses, address, now), self._bucket(self._users, user, now)
            clean = own.tokens >= self.burst
            holding = (own,) if clean else (own, account)
            wait = max(0.0, max((1.0 - b.tokens) / self.rate for b in holding))
            if wait > limit:
                return None
            own.tokens -= 1.0
            took_user = not clean or account.tokens >= 1.0      # a clean address never queues on the user
            if took_user:
                account.tokens -= 1.0
            return Attempt(wait, address, user if took_user else None)

    def refund(self, attempt: Attempt) -> None:
        """The attempt succeeded: give its tokens back."""
        with self._lock:
            now = self.clock()
            taken = [self._bucket(self._addresses, attempt.address, now)]
            if attempt.user is not None:
                taken.append(self._bucket(self._users, attempt.user, now))
            for bucket in taken:
                bucket.tokens = min(self.burst, bucket.tokens + 1.0)


@dataclass
class _Peer:
    host: str
    since: float
    authenticated: bool = False
    evicted: bool = False               # cut for a newer one: no longer counted, even before it leaves
    spoke: bool = False                 # has sent a complete message (a DMA's CONNECT_OPEN comes at once)
    gone: threading.Event = field(default_factory=threading.Event)    # set when the connection leaves


@dataclass
class Verdict:
    """What the guard decided about a new connection: a refusal text, and connections to cut."""

    refusal: str | None = None
    evict: list[object] = field(default_factory=list)


class ConnectionGuard:
    """Counts connections: pending (unauthenticated) per address and in all, and authenticated
    sessions against ``server.max_sessions``; one instance lives as long as the server."""

    def __init__(self, settings: ServerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.settings = settings
        self.throttle = AuthThrottle(settings.auth_failure_rate, settings.auth_failure_burst, clock)
        self._peers: dict[object, _Peer] = {}
        self._lock = threading.Lock()

    def reconfigure(self, settings: ServerSettings) -> None:
        """New limits (a reload); connections already counted stay counted."""
        with self._lock:
            if (settings.auth_failure_rate, settings.auth_failure_burst) != \
                    (self.settings.auth_failure_rate, self.settings.auth_failure_burst):
                self.throttle = AuthThrottle(settings.auth_failure_rate, settings.auth_failure_burst, self.clock)
            self.settings = settings

    def arrive(self, conn: object, host: str) -> Verdict:
        """A new connection from ``host``: admit it as pending, or say why not."""
        s = self.settings
        host = address_key(host)
        with self._lock:
            if self._count(authenticated=True) >= s.max_sessions:
                return Verdict(f"too many sessions (server.max_sessions = {s.max_sessions})")
            pending = [c for c, p in self._peers.items() if not p.authenticated and not p.evicted]
            if sum(1 for c in pending if self._peers[c].host == host) >= s.max_logins_per_address:
                return Verdict(f"too many logins in progress from {host} "
                               f"(server.max_logins_per_address = {s.max_logins_per_address})")
            evict = []
            if len(pending) >= s.max_pending_logins:
                victim = self._oldest_of_busiest(pending)
                self._peers[victim].evicted = True
                evict.append(victim)
            self._peers[conn] = _Peer(host, self.clock())
            return Verdict(None, evict)

    def _count(self, authenticated: bool) -> int:
        return sum(1 for p in self._peers.values() if p.authenticated == authenticated and not p.evicted)

    def _oldest_of_busiest(self, pending: list[object]) -> object:
        """Whom a new arrival cuts: from the address with most pending logins, a silent one
        before one that has spoken, the oldest first."""
        per_host: dict[str, int] = {}
        for conn in pending:
            host = self._peers[conn].host
            per_host[host] = per_host.get(host, 0) + 1
        busiest = max(per_host.values())
        return min((c for c in pending if per_host[self._peers[c].host] == busiest),
                   key=lambda c: (self._peers[c].spoke, self._peers[c].since))

    def spoke(self, conn: object) -> None:
        """The connection sent its first complete message: a login under way, which a new
        arrival cuts only after every silent one from an address as busy."""
        peer = self._peers.get(conn)
        if peer is not None:
            peer.spoke = True

    def authenticate(self, conn: object) -> str | None:
        """The connection proved its credentials: count it as a session, or say why not."""
        s = self.settings
        with self._lock:
            peer = self._peers.get(conn)
            if peer is not None and peer.evicted:
                return f"too many logins in progress (server.max_pending_logins = {s.max_pending_logins})"
            if peer is None or peer.authenticated:
                return None
            if self._count(authenticated=True) >= s.max_sessions:
                return f"too many sessions (server.max_sessions = {s.max_sessions})"
            peer.authenticated = True
            return None

    def leave(self, conn: object) -> None:
        with self._lock:
            peer = self._peers.pop(conn, None)
        if peer is not None:
            peer.gone.set()

    def hold(self, conn: object, seconds: float) -> bool:
        """Block (on a worker thread) for a throttled login's wait; False when the connection
        left meanwhile (closed, cut, or the server stopping), which ends the wait at once."""
        peer = self._peers.get(conn)
        return peer is not None and not peer.gone.wait(seconds)

    def host(self, conn: object) -> str | None:
        """The peer address of an admitted connection (None: not admitted here, e.g. a unit test)."""
        peer = self._peers.get(conn)
        return peer.host if peer else None

    def login_time_left(self, conn: object) -> float:
        """Seconds until a pending connection's login deadline (``server.login_timeout``)."""
        peer = self._peers.get(conn)
        since = peer.since if peer else self.clock()
        return since + self.settings.login_timeout - self.clock()

    def deadline(self, conn: object, authenticated: bool, job_running: bool,
                 last_input: float) -> tuple[float, str | None]:
        """When to look at a connection again, or why to cut it now: the login deadline before
        authentication (however many bytes trickle in), the idle one after, never during a job.
        ``last_input`` is the session's last activity: its last request, or the last look that
        saw its job running (so a session gets its whole idle time after its job ends)."""
        s = self.settings
        idle_limit = s.idle_timeout
        if not authenticated:
            left = self.login_time_left(conn)
            if left <= 0:
                return 0.0, f"no login within {s.login_timeout:g} s (server.login_timeout)"
            return min(left, idle_limit or left), None
        if not idle_limit:
            return 60.0, None                        # a reload may set a limit
        if job_running:                              # look often: idle time starts when the job stops
            return min(JOB_LOOK, idle_limit / 4), None
        idle = self.clock() - last_input
        if idle >= idle_limit:
            return 0.0, f"idle for {idle:.0f} s (server.idle_timeout = {idle_limit:g})"
        return idle_limit - idle, None

    def counts(self) -> tuple[int, int]:
        """(pending logins, authenticated sessions)."""
        with self._lock:
            return self._count(authenticated=False), self._count(authenticated=True)
