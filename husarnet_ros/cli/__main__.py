"""`python -m husarnet_ros.cli`: the same as the `husarnet-ros` command."""

import sys

from .main import main

sys.exit(main())
