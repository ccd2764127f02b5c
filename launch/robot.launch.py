"""One robot: the husarnet daemon (when asked or none runs), the DDS configuration, and the husarnet nodes.

    ros2 launch husarnet_ros robot.launch.py                         # daemon already running as a service
    sudo ros2 launch husarnet_ros robot.launch.py start_daemon:=true namespace:=robot1
    ros2 launch husarnet_ros robot.launch.py fleet:=fleet.yaml robot:=robot1 dds:=cyclonedds

`ros2 launch husarnet_ros robot.launch.py --show-args` lists every argument. The DDS environment the nodes
get is printed as `export` lines (and written to <dds_output_dir>/env.sh) for your own nodes.
What it does and in which order: husarnet_ros/ros/launch_actions.py.
"""

from husarnet_ros.ros.launch_actions import robot_launch_description, share_dir


def generate_launch_description():
    return robot_launch_description(share_dir(__file__))
