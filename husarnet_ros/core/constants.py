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
BEACON_CANDIDATE_TTL = 30.0  # a beacon-learnt endpoint is forgotten after this

# --- handshake --------------------------------------------------------------
HANDSHAKE_RETRY_INTERVAL = 1.0
HANDSHAKE_RETRY_MAX_INTERVAL = 8.0  # exponential backoff cap while a peer is unreachable
HANDSHAKE_TIMEOUT = 5.0  # an unanswered initiation is abandoned after this
HANDSHAKE_INITS_PER_SECOND = 20.0  # per source endpoint, token bucket (DoS resistance)
HANDSHAKE_INIT_BURST = 10.0

# --- sessions ---------------------------------------------------------------
REKEY_AFTER_TIME = 120.0
REKEY_AFTER_MESSAGES = 2**32
REJECT_AFTER_TIME = 180.0  # a session key is never used beyond this age
REJECT_AFTER_MESSAGES = 2**60
SESSION_IDLE_TIMEOUT = 180.0  # nothing heard for this long: the peer is gone
PREVIOUS_SESSION_GRACE = 15.0  # keep the old session this long after a rekey, for packets in flight
KEEPALIVE_INTERVAL = 10.0  # on an established link; the authenticated ping doubles as keepalive
NAT_KEEPALIVE_INTERVAL = 25.0
PATH_DEAD_AFTER = 15.0  # no authenticated frame for this long while probing: try other endpoints

# --- replay protection (RFC 6479) ------------------------------------------
REPLAY_WINDOW_BITS = 4096  # packets; must be a power of two and a multiple of 64

# --- data plane -------------------------------------------------------------
DEFAULT_MTU = 1350
MAX_DATAGRAM = 65535
LATENCY_PROBE_INTERVAL = 5.0  # authenticated ping on every established session
PROBE_TIMEOUT = 5.0  # an unanswered probe is forgotten after this
PENDING_PACKETS_PER_PEER = 32  # packets queued while a handshake is in progress
MAX_PEERS = 4096  # bound on peer state created by (possibly hostile) traffic
MAX_HEARD_BEACONS = 256  # beacons remembered from peers not on the whitelist (see Node.whitelist_changed)
RATE_LIMIT_TABLE_SIZE = 4096
