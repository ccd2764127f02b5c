"""The self-hosted server side: a base server (rendezvous, NAT traversal, relay) for robots on other networks.

    ros2 launch husarnet_ros server.launch.py                              # UDP 5582 and TCP 443
    ros2 launch husarnet_ros server.launch.py udp_port:=5590 tcp_port:=0 status_file:=/tmp/base.json

`ros2 launch husarnet_ros server.launch.py --show-args` lists every argument. Robots use it with
`husarnet-ros daemon --base-server HOST[:PORT]`, `husarnet-ros base add HOST[:PORT]` or the fleet file.
What it starts: husarnet_ros/ros/launch_actions.py (server_launch_description).
"""

from husarnet_ros.ros.launch_actions import server_launch_description


def generate_launch_description():
    return server_launch_description()
