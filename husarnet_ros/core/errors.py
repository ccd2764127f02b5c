"""Error types of the core. Every decoder raises only these, never a bare exception."""


class HusarnetError(Exception):
    """Base class of every error husarnet_ros raises on purpose."""


class ProtocolError(HusarnetError):
    """A datagram or frame that cannot be decoded or fails authentication."""


class IdentityError(HusarnetError):
    """A key or identity file that is malformed, corrupt or does not match its address."""


class AddressError(HusarnetError, ValueError):
    """A string or bytes value that is not a valid overlay (fc94::/16) address."""


class ConfigError(HusarnetError):
    """Invalid configuration: the message says which setting and why."""


class AuthenticationError(ProtocolError):
    """A frame or message whose MAC, tag or signature does not verify: forged or corrupted."""


class ReplayError(ProtocolError):
    """A frame that was already received, or is too old for the replay window."""
