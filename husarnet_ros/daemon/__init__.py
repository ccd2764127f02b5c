"""I/O shell around the core: TUN, sockets, discovery, control API, privileges."""
