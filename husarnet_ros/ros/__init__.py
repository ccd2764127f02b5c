"""rclpy nodes: thin adapters over husarnet_ros.client."""
