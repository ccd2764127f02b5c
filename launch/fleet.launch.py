"""One robot of a fleet described once in a fleet YAML file (example: config/fleet.yaml).

    ros2 launch husarnet_ros fleet.launch.py fleet:=/etc/husarnet-ros/fleet.yaml robot:=robot1

The robot's namespace, hostname, whitelist, hosts and DDS peers come from the fleet file; every other
argument of robot.launch.py (start_daemon, control_socket, state_dir, dds, ...) is passed on. Several
robots on one machine: one launch per robot, each with its own robot:=, control_socket:= and state_dir:=.
"""

from husarnet_ros.ros.launch_actions import fleet_launch_description, share_dir


def generate_launch_description():
    return fleet_launch_description(share_dir(__file__))
