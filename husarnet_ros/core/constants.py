"""Every timer, limit and well-known number of the protocol, in one place.

Times are in seconds (floats); the core never reads a clock, callers pass ``now``.
"""

# --- addressing -------------------------------------------------------------
OVERLAY_PREFIX = bytes.fromhex("fc94")
OVERLAY_PREFIX_LEN = 16  # fc94::/16
# Husarnet's proof of work on identities: sha256(pubkey)[0] == 0 and [1] < 50.
IDENTITY_POW_BYTE1_LIMIT = 50

# --- ports and discovery ----------------------------------------------------
DEFAULT_UDP_PORT = 5582
DISCOVERY_PORT = 5581
DISCOVERY_GROUP_V4 = "224.3.252.148"
DISCOVERY_GROUP_V6 = "ff02:88bb:31e4:95f7:2b87:6b52:e112:19ac"
BEACON_INTERVAL = 2.0  # a new robot on the LAN is found within about this long
BEACON_CANDIDATE_TTL = 30.0  # a beacon-learnt endpoint is forgotten after this (unless in use)
MAX_CANDIDATES_PER_PEER = 16

# --- handshake --------------------------------------------------------------
HANDSHAKE_RETRY_INTERVAL = 1.0
HANDSHAKE_RETRY_MAX_INTERVAL = 8.0  # exponential backoff cap while a peer is unreachable
HANDSHAKE_TIMEOUT = 5.0  # an unanswered initiation is abandoned after this
HANDSHAKE_INITS_PER_SECOND = 20.0  # per source host, token bucket (DoS resistance)
HANDSHAKE_INIT_BURST = 10.0
MAX_INIT_TARGETS = 4  # an init goes to this many of the peer's best candidates at once
MAX_PENDING_RESPONSES = 1024  # responder states awaiting a confirm, over all peers (oldest evicted)

# --- sessions ---------------------------------------------------------------
REKEY_AFTER_TIME = 120.0
REKEY_AFTER_MESSAGES = 2**32
REJECT_AFTER_TIME = 180.0  # a session key is never used beyond this age
REJECT_AFTER_MESSAGES = 2**60
SESSION_IDLE_TIMEOUT = 180.0  # nothing heard for this long: the peer is gone
PREVIOUS_SESSION_GRACE = 15.0  # keep the old session this long after a rekey, for packets in flight

# --- paths: liveness, recovery, preference ------------------------------------
LATENCY_PROBE_INTERVAL = 5.0  # authenticated ping on every established path (doubles as the keepalive)
PROBE_TIMEOUT = 5.0  # an unanswered probe is forgotten after this
PATH_QUIET_AFTER = 0.4  # traffic unanswered this long: ping the path to find out whether it still works
PATH_PING_INTERVAL = 0.25  # ... and again this often while it stays unanswered
PATH_DEAD_AFTER = 1.0  # unanswered this long (and at least PATH_DEAD_PINGS pings): the path is dead
PATH_DEAD_PINGS = 2
PATH_PROBE_INTERVAL = 0.25  # while no path answers, probe every candidate this often ...
PATH_FAST_PROBING = 20.0  # ... for this long after the path died, then back off ...
PATH_PROBE_MAX_INTERVAL = 5.0  # ... up to this interval
PATH_HANDSHAKE_AFTER = 3.0  # no candidate answers the session's probes: the peer may have lost it, handshake
MAX_UPGRADE_PROBES = 4  # better-ranked candidates probed per latency round

# --- replay protection (RFC 6479) ------------------------------------------
REPLAY_WINDOW_BITS = 4096  # packets; must be a power of two and a multiple of 64

# --- data plane -------------------------------------------------------------
DEFAULT_MTU = 1350
# Nice value of the data-plane threads (daemon --data-plane-nice). Measured (bench/dds.py, 2-core VM, 1 MB
# Fast DDS samples RELIABLE at 125 Hz): at 0, 35 of 294 samples arrived; at -10, 150 of 177 (the publisher
# was slowed down instead of its packets dropped in hnet0's queue).
DEFAULT_DATA_PLANE_NICE = -10
MAX_DATAGRAM = 65535  # largest UDP payload read or written
# Datagrams larger than the overlay MTU needs, for TCP segments to peers with FEATURE_LARGE_SEGMENTS: the
# daemon asks the kernel how large a datagram the route's interface takes, and a padded probe of that size
# must come back before any segment uses it (a smaller MTU further on would drop it silently).
# Below this a probe is not worth it: a segment must grow by whole MSS (see Node.send_large), and a datagram
# this small holds only one of the overlay's (a 1500-byte LAN gains nothing).
MIN_SIZE_PROBE = 2048
MAX_PATH_DATAGRAM = 16384  # above ~9 KB (jumbo frames) fewer AEAD calls gain little; a loss costs more
SIZE_PROBE_INTERVAL = 30.0  # re-ask the kernel, and probe again if it allows more than was confirmed
PENDING_PACKETS_PER_PEER = 32  # packets queued while a handshake is in progress

# --- bounds on state that remote input can create ------------------------------
MAX_PEERS = 4096  # the peer table; the least useful unpinned peer is evicted when it is full
PEER_FORGET_AFTER = 300.0  # an unpinned peer with no session and nothing heard for this long is forgotten
MAX_HEARD_BEACONS = 256  # beacons remembered from peers not on the whitelist (see Node.whitelist_changed)
RATE_LIMIT_TABLE_SIZE = 4096  # source hosts tracked by the init rate limiter (least recently used evicted)
MAX_POSTED_EVENTS = 4096  # events the data-plane threads may queue for the control loop
MAX_POSTED_HANDSHAKES = 256  # handshake datagrams queued for the control loop (a flood is dropped here)

# Feature exchange (wire.INNER_FEATURES): offered when a session is installed, then again at this interval
# until the peer answers, at most this many times (a peer that predates the frame never does).
FEATURES_RETRY_INTERVAL = 0.5
FEATURES_ATTEMPTS = 5

# Hole punching (core/node.py learn_from_base): after a base server names a peer's candidates, probe the
# better-ranked ones this often, this long, at most this many per round.
PUNCH_INTERVAL = 0.2
PUNCH_DURATION = 3.0
MAX_PUNCH_PROBES = 8
