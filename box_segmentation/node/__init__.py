"""The ROS 2 layer: rclpy is imported here and nowhere else in box_segmentation."""
