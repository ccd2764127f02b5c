"""Sans-IO protocol core: pure functions and state machines; no sockets, threads, clocks or ROS."""
