"""Test and demo tooling: network namespace labs."""
