#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo fleet: robots in network namespaces that find each other over the
# encrypted overlay (needs root). Arguments go to the demo, see `./scripts/demo.sh --help`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HUSARNET_ROS_VENV:-$REPO/.venv}
"$REPO/scripts/setup.sh"
cd "$REPO"
exec "$VENV/bin/python" -m husarnet_ros.testing.demo "$@"
