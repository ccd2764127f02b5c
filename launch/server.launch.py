"""The self-hosted server side: a base server (rendezvous, NAT traversal, relay) for robots on other networks,
and with dashboard:=true the control plane beside it: the Dashboard (accounts, join codes, networks and the
license robots pin) and Websetup (pushes each robot's whitelist and hosts over the overlay).

    ros2 launch husarnet_ros server.launch.py                              # UDP 5582 and TCP 443
    ros2 launch husarnet_ros server.launch.py udp_port:=5590 tcp_port:=0 status_file:=/tmp/base.json

    # The whole control plane. Websetup listens on the fc94 address of this server's own husarnet-ros
    # daemon (another UDP port than the base server's, whitelist off: `husarnet-ros whitelist disable`);
    # create an account first: husarnet-ros dashboard create-user alice --data-dir /var/lib/hr-dashboard
    ros2 launch husarnet_ros server.launch.py dashboard:=true public_host:=198.18.0.10 \
        dashboard_data_dir:=/var/lib/hr-dashboard websetup_address:=fc94:...   # husarnet-ros whoami

Robots then run `husarnet-ros setup-server 198.18.0.10:8080 --fingerprint FP` (FP: `husarnet-ros dashboard
fingerprint`), which also gives them this base server, and `husarnet-ros join CODE`. Without the Dashboard,
robots use the base server with `husarnet-ros daemon --base-server HOST[:PORT]`, `husarnet-ros base add
HOST[:PORT]` or the fleet file.

`ros2 launch husarnet_ros server.launch.py --show-args` lists every argument (docs/ROS.md explains them). A
bad argument or combination (websetup_address:= without dashboard:=true, an address outside fc94::/16, no
public_host) stops the launch with one error line before anything starts; any process that exits ends the
launch. What it starts: husarnet_ros/ros/launch_actions.py (server_launch_description); the decisions:
husarnet_ros/launch_support.py (control_plane).
"""

from husarnet_ros.ros.launch_actions import server_launch_description


def generate_launch_description():
    return server_launch_description()
