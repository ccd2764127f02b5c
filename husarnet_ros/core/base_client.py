"""A node's side of the base servers, sans-IO: registration, keepalive, failover and rendezvous requests.

The node registers with every configured base server (so a peer homed on any of them can reach it through
that one) and uses one of them, its *home*, for rendezvous and relay: the registered one that answers
fastest, kept until another is clearly faster or it stops answering. Every ``KEEPALIVE_S`` each base gets a
hello; the answer (a cookie) is turned into a signed registration at once, and its round trip is the base's
RTT. ``DOWN_AFTER_UNANSWERED`` hellos in a row without an answer mark a base down, and the home moves to the
next registered one; a base that says it does not know us (it restarted) gets a registration at once.

Nothing a base says changes a session: a ``PeerInfo`` only names endpoints to probe.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from . import basewire
from .errors import ConfigError, ProtocolError
from .identity import Identity
from .peer import Endpoint

KEEPALIVE_S = 5.0  # hello (and registration) to every base this often: liveness, RTT, NAT mapping
ANSWER_TIMEOUT_S = 1.0  # a hello unanswered this long is retried
DOWN_AFTER_UNANSWERED = 3  # hellos in a row without an answer: the base is down
RETRY_MAX_S = 5.0  # a down base is retried at least this often
# Another base becomes home only when its RTT is below this share of the home's and lower by this much:
# sub-millisecond differences are noise, and every switch moves every relayed path.
HOME_SWITCH_RATIO = 0.5
HOME_SWITCH_MIN_GAIN_MS = 5.0
# ... and only once both have this many RTT samples: the first round trip, taken while a daemon starts,
# can be many times the real one, and must not make a healthy home look slow.
HOME_SWITCH_MIN_SAMPLES = 3
RTT_WINDOW = 4  # a base's RTT is the least of its last this many hello round trips
CONNECT_INTERVAL_S = 5.0  # at most one rendezvous request per peer this often
UDP_RETRY_S = 15.0  # while a base is reached over TCP, try UDP again this often (and go back when it answers)
TCP_RETRY_S = 10.0  # after TCP to a base failed too, try it again this long later
DEFAULT_BASE_PORT = 5582
DEFAULT_BASE_TCP_PORT = 443  # the fallback for networks that let no UDP out
# A node registers with every base it is given (a hello to each every KEEPALIVE_S): a bound on that work,
# and on what the daemon's configuration, its API and a fleet file may list.
MAX_BASE_SERVERS = 16

Datagram = tuple[Endpoint, bytes]


def parse_base_server(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port); ConfigError if not."""
    value = text.strip()
    if not value:
        raise ConfigError("base server: empty")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")) or rest == ":":
            raise ConfigError(f"base server {text!r}: expected [address]:port")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text:
            raise ConfigError(f"base server {text!r}: empty port after ':'")
    elif ":" in value:
        host, port_text = value, ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                f"base server {text!r}: not an IPv6 address; write [address]:port or host:port"
            ) from None
    else:
        host, port_text = value, ""
    if not host:
        raise ConfigError(f"base server {text!r}: no host")
    try:
        port = int(port_text) if port_text else DEFAULT_BASE_PORT
    except ValueError:
        raise ConfigError(f"base server {text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"base server {text!r}: port {port} is out of range 1-65535")
    return host, port


# A DNS name as a base server's host (lower case by then): labels of letters, digits, '-' and '_'.
_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*\.?")


def base_server_name(text: str) -> str:
    """The one spelling of a base server: ``host:port`` or ``[IPv6]:port``, the port always written, an IP
    address compressed, a host name in lower case. ConfigError saying what is wrong when ``text`` is not
    ``host[:port]`` (parse_base_server) or its host is neither an IP address nor a DNS name."""
    host, port = parse_base_server(text)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = host.lower()  # DNS names are case-insensitive: one server, one name
        if text.strip().startswith("[") or not _HOST_NAME.fullmatch(host):
            raise ConfigError(
                f"base server {text!r}: {host!r} is neither an IP address nor a valid host name"
            ) from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class BaseState(enum.Enum):
    CONNECTING = "connecting"  # no answer yet
    REGISTERED = "registered"
    DOWN = "down"  # stopped answering


@dataclass
class BaseLink:
    """One base server. ``endpoint`` is where its messages go and come from now: its UDP endpoint, or, while
    UDP gets no answer, the local end of a TCP bridge (daemon/base_tcp.py) that carries them over TCP."""

    name: str  # as configured ("host:port")
    endpoint: Endpoint
    state: BaseState = BaseState.CONNECTING
    transport: str = "udp"
    udp_endpoint: Endpoint = ("", 0)  # the base's UDP endpoint (set from endpoint when created)
    tcp_wanted: bool = False  # UDP does not answer: the daemon should open TCP (then call use_tcp)
    tcp_retry_at: float = 0.0
    udp_probe_at: float = 0.0  # while on TCP: next hello over UDP
    udp_probe_wanted_until: float = -1.0  # its challenge is awaited until then (separately from TCP's)
    rtt_ms: float | None = None  # the least of the recent samples: a busy moment's spike is not the base
    rtt_recent: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=RTT_WINDOW))
    observed: Endpoint | None = None  # our endpoint as this base sees it (the NAT's public side)
    registered_at: float | None = None
    last_answer: float | None = None
    unanswered: int = 0
    hello_sent_at: float | None = None  # the hello waiting for its answer (None after ANSWER_TIMEOUT_S)
    challenge_wanted_until: float = -1.0  # a challenge is answered only shortly after our own hello
    next_hello_at: float = 0.0
    refresh_s: float = KEEPALIVE_S

    def __post_init__(self) -> None:
        if self.udp_endpoint == ("", 0):
            self.udp_endpoint = self.endpoint

    def status(self, home: bool) -> dict[str, object]:
        return {
            "address": self.name,
            "transport": self.transport,
            "state": self.state.value,
            "home": home,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "observed_endpoint": None if self.observed is None else f"{self.observed[0]}:{self.observed[1]}",
        }


@dataclass
class BaseClient:
    identity: Identity
    local_endpoints: Callable[[], list[Endpoint]] = list
    links: list[BaseLink] = field(default_factory=list)
    outbox: collections.deque[Datagram] = field(default_factory=collections.deque)
    peer_infos: collections.deque[basewire.PeerInfo] = field(default_factory=collections.deque)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self._home: BaseLink | None = None
        self._connect_sent: dict[bytes, float] = {}
        self.home_changes = 0

    # ------------------------------------------------------------------ configuration
    def set_servers(self, servers: list[tuple[str, Endpoint]], now: float) -> None:
        """The configured base servers (name, resolved endpoint), in the user's order; known ones keep their
        state."""
        known = {(link.name, link.udp_endpoint): link for link in self.links}
        self.links = [known.get(key) or BaseLink(key[0], key[1], next_hello_at=now) for key in servers]
        if self._home is not None and self._home not in self.links:
            self._home = None
        self._choose_home()

    def is_base(self, endpoint: Endpoint) -> bool:
        return self._link_for(endpoint) is not None

    def _link_for(self, endpoint: Endpoint) -> BaseLink | None:
        for link in self.links:
            if endpoint == link.endpoint or endpoint == link.udp_endpoint:
                return link
        return None

    def endpoints(self) -> frozenset[Endpoint]:
        """Every endpoint base-server messages may come from (UDP, and the TCP bridges in use)."""
        return frozenset(e for link in self.links for e in (link.endpoint, link.udp_endpoint))

    # ------------------------------------------------------------------ TCP fallback
    def use_tcp(self, link: BaseLink, bridge: Endpoint, now: float) -> None:
        """The daemon opened TCP to ``link``'s base; its messages go through ``bridge`` from now on."""
        link.endpoint, link.transport, link.tcp_wanted = bridge, "tcp", False
        link.state, link.unanswered = BaseState.CONNECTING, 0
        link.udp_probe_at = now + UDP_RETRY_S
        self.counters["base_tcp_fallbacks"] += 1
        self._hello(link, now)

    def tcp_failed(self, link: BaseLink, now: float) -> None:
        """TCP to the base could not be opened, or broke: back to UDP (down), TCP again later."""
        was_tcp = link.transport == "tcp"
        link.endpoint, link.transport, link.tcp_wanted = link.udp_endpoint, "udp", False
        link.tcp_retry_at = now + TCP_RETRY_S
        link.hello_sent_at = None
        if was_tcp and link.state is not BaseState.DOWN:
            link.state = BaseState.DOWN
            link.rtt_ms = None
            link.rtt_recent.clear()
            self.counters["base_down"] += 1
            self._choose_home()
        link.next_hello_at = now

    def _back_to_udp(self, link: BaseLink) -> None:
        link.endpoint, link.transport = link.udp_endpoint, "udp"
        self.counters["base_udp_again"] += 1

    @property
    def home(self) -> BaseLink | None:
        return self._home

    # ------------------------------------------------------------------ timers
    def tick(self, now: float) -> None:
        for link in self.links:
            if link.hello_sent_at is not None and now - link.hello_sent_at >= ANSWER_TIMEOUT_S:
                sent = link.hello_sent_at
                link.hello_sent_at = None
                link.unanswered += 1
                if link.unanswered >= DOWN_AFTER_UNANSWERED and link.state is not BaseState.DOWN:
                    link.state = BaseState.DOWN
                    link.rtt_ms = None
                    link.rtt_recent.clear()
                    self.counters["base_down"] += 1
                    self._choose_home()
                # Retry at once while it may only have lost a datagram; a down base every RETRY_MAX_S.
                link.next_hello_at = sent + (
                    RETRY_MAX_S if link.state is BaseState.DOWN else ANSWER_TIMEOUT_S
                )
            if link.state is BaseState.DOWN and link.transport == "udp" and now >= link.tcp_retry_at:
                link.tcp_wanted = True  # UDP gets no answer: the daemon tries TCP
            if link.hello_sent_at is None and now >= link.next_hello_at:
                self._hello(link, now)
            if link.transport == "tcp" and now >= link.udp_probe_at:
                # Does UDP work again? A challenge coming back over it moves the link back (receive).
                link.udp_probe_at = now + UDP_RETRY_S
                link.udp_probe_wanted_until = now + RETRY_MAX_S
                self.outbox.append((link.udp_endpoint, basewire.encode_hello()))

    def next_timer(self, now: float) -> float:
        due = now + KEEPALIVE_S
        for link in self.links:
            if link.hello_sent_at is not None:
                due = min(due, link.hello_sent_at + ANSWER_TIMEOUT_S)
            else:
                due = min(due, link.next_hello_at)
        return max(now, due)

    def check_home(self, now: float) -> None:
        """Something relayed through the home stopped answering: hello it now (unless one is out already), so
        that if it is gone it is down after DOWN_AFTER_UNANSWERED answer timeouts, not a keepalive later."""
        home = self._home
        if home is not None and home.hello_sent_at is None:
            self.counters["base_checks"] += 1
            self._hello(home, now)

    def network_changed(self, now: float) -> None:
        """Our addresses changed: register again everywhere at once (new local endpoints, and the NAT may
        have given us a new public endpoint, which peers learn from the base)."""
        for link in self.links:
            link.next_hello_at = now
            if link.hello_sent_at is None:
                self._hello(link, now)

    def _hello(self, link: BaseLink, now: float) -> None:
        link.hello_sent_at = now
        link.challenge_wanted_until = now + RETRY_MAX_S
        self.outbox.append((link.endpoint, basewire.encode_hello()))

    # ------------------------------------------------------------------ input
    def receive(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        """A base-protocol datagram (types 0x11..0x18 but relayed frames); bad or unexpected ones are
        counted and dropped."""
        link = self._link_for(endpoint)
        if link is None:
            self.counters["drop_base_not_configured"] += 1
            return
        if endpoint != link.endpoint:
            # Over UDP while the link uses TCP: only the answer to our own UDP probe counts (once), and it
            # means UDP works again: register over UDP.
            if not data or data[0] != basewire.MSG_BASE_CHALLENGE or now > link.udp_probe_wanted_until:
                self.counters["drop_base_other_transport"] += 1
                return
            try:
                challenge = basewire.decode_challenge(data)
            except ProtocolError:
                self.counters["drop_base_malformed"] += 1
                return
            link.udp_probe_wanted_until = -1.0
            self._back_to_udp(link)
            self._register(link, challenge)
            return
        try:
            kind = data[0] if data else -1
            if kind == basewire.MSG_BASE_CHALLENGE:
                self._on_challenge(link, basewire.decode_challenge(data), now)
            elif kind == basewire.MSG_BASE_WELCOME:
                self._on_welcome(link, basewire.decode_welcome(data), now)
            elif kind == basewire.MSG_BASE_PEER:
                self.peer_infos.append(basewire.decode_peer(data))
            elif kind == basewire.MSG_BASE_UNKNOWN:
                basewire.decode_unknown(data)
                self.counters["base_forgot_us"] += 1
                if link.hello_sent_at is None:
                    self._hello(link, now)
            else:
                self.counters["drop_base_unexpected"] += 1
        except ProtocolError:
            self.counters["drop_base_malformed"] += 1

    def _on_challenge(self, link: BaseLink, challenge: basewire.Challenge, now: float) -> None:
        # One signed registration per hello of ours, and only soon after it: a forged challenge (the base's
        # address is easy to spoof) must not make us sign and send more than it cost.
        if now > link.challenge_wanted_until:
            self.counters["drop_base_unsolicited"] += 1
            return
        link.challenge_wanted_until = -1.0
        if link.hello_sent_at is not None:
            sample = (now - link.hello_sent_at) * 1000.0
            link.rtt_recent.append(sample)
            link.rtt_ms = min(link.rtt_recent)
        self._register(link, challenge)

    def _register(self, link: BaseLink, challenge: basewire.Challenge) -> None:
        register = basewire.Register(
            challenge.epoch, challenge.cookie, self.identity.public_key, self.local_endpoints()
        )
        signature = self.identity.sign(basewire.REGISTER_CONTEXT + register.signed_part())
        self.outbox.append((link.endpoint, register.signed_part() + signature))

    def _on_welcome(self, link: BaseLink, welcome: basewire.Welcome, now: float) -> None:
        if welcome.address != self.identity.address:
            self.counters["drop_base_wrong_address"] += 1
            return
        link.hello_sent_at = None
        link.unanswered = 0
        link.last_answer = now
        if link.transport == "udp":
            link.tcp_wanted = False  # UDP works: a TCP bridge still opening is not wanted any more
        link.observed = welcome.observed
        link.refresh_s = max(1.0, min(float(welcome.refresh_s), KEEPALIVE_S))
        link.next_hello_at = now + link.refresh_s
        if link.state is not BaseState.REGISTERED:
            link.state = BaseState.REGISTERED
            link.registered_at = now
        self._choose_home()

    def _choose_home(self) -> None:
        def rtt(link: BaseLink) -> float:
            return link.rtt_ms if link.rtt_ms is not None else float("inf")

        registered = [link for link in self.links if link.state is BaseState.REGISTERED]
        home = self._home
        if not registered:
            new = None
        elif home is None or home.state is not BaseState.REGISTERED:
            new = min(registered, key=rtt)
        else:
            fastest = min(registered, key=rtt)
            settled = min(len(home.rtt_recent), len(fastest.rtt_recent)) >= HOME_SWITCH_MIN_SAMPLES
            faster = rtt(fastest) < HOME_SWITCH_RATIO * rtt(home)
            clearly = faster and rtt(home) - rtt(fastest) >= HOME_SWITCH_MIN_GAIN_MS
            new = fastest if settled and clearly else home
        if new is not home:
            self._home = new
            self.home_changes += 1

    # ------------------------------------------------------------------ rendezvous
    def connect(self, target: bytes, now: float) -> bool:
        """Ask the home base to tell us and ``target`` each other's candidates (at most every
        ``CONNECT_INTERVAL_S`` per target); False when there is no home base or it is too soon."""
        home = self._home
        if home is None:
            return False
        last = self._connect_sent.get(target)
        if last is not None and now - last < CONNECT_INTERVAL_S:
            return False
        if len(self._connect_sent) > 4096:
            self._connect_sent = {t: s for t, s in self._connect_sent.items() if now - s < CONNECT_INTERVAL_S}
        self._connect_sent[target] = now
        self.outbox.append((home.endpoint, basewire.encode_connect(target)))
        return True

    def status(self) -> list[dict[str, object]]:
        return [link.status(link is self._home) for link in self.links]
