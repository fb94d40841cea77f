"""Start segment_node with the package's parameters file.

    ros2 launch box_segmentation segment.launch.py checkpoint:=/path/to/model.pt
    ros2 launch box_segmentation segment.launch.py checkpoint:=model.pt image_topic:=/cam1/image_raw namespace:=cam1
    ros2 launch box_segmentation segment.launch.py checkpoint:=model.pt \
        depth_topic:=/camera/aligned_depth_to_color/image_raw camera_info_topic:=/camera/color/camera_info

The arguments named in OVERRIDES override the params file only when given: left empty,
the file's values stand (config/segment.yaml unless params_file says otherwise).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# Launch arguments that override node parameters of the same name.
OVERRIDES = {
    "checkpoint": "Path of the model checkpoint (.pt); required unless the params file sets it.",
    "image_topic": "Input image topic (the params file's default: /camera/color/image_raw).",
    "device": "auto, cpu, cuda or cuda:N (the params file's default: auto).",
    "depth_topic": "Aligned depth image topic (16UC1 or 32FC1) for pick poses; empty: no depth.",
    "camera_info_topic": "CameraInfo of the colour camera; required with depth_topic.",
}


def segment_node(context):
    # Resolved here so that empty arguments can be left out: an empty override would
    # replace the params file's value with "".
    given = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    overrides = {name: value for name, value in given.items() if value}
    return [Node(
        package="box_segmentation",
        executable="segment_node",
        name="segment_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        output="screen",
        emulate_tty=True,
        # Required: when the node ends, a failed start included, the launch ends (also a bring-up including this).
        on_exit=Shutdown(reason="segment_node exited"),
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("box_segmentation"), "config", "segment.yaml")
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value="", description=text) for name, text in OVERRIDES.items()),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="Parameters file for segment_node."),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its relative output topics."),
        OpaqueFunction(function=segment_node),
    ])
