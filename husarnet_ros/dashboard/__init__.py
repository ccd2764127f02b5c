"""The Dashboard: accounts, devices, networks, shares and join codes of a self-hosted installation, its REST
API and web UI, and the data Websetup serves to daemons (docs/CONTROL_PLANE.md)."""
