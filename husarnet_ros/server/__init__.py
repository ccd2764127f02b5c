"""The base server: rendezvous, NAT traversal and relay for nodes that are not on one LAN."""
