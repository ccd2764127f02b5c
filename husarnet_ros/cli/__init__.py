"""The husarnet-ros command line."""
