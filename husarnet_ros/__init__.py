"""husarnet_ros: an encrypted peer-to-peer IPv6 overlay for robot fleets, integrated with ROS 2."""

__version__ = "0.1.0"
