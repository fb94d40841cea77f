"""Start segment_node with the package's parameters file and Fast DDS profile.

    ros2 launch box_segmentation segment.launch.py checkpoint:=/path/to/model.pt
    ros2 launch box_segmentation segment.launch.py checkpoint:=model.pt image_topic:=/cam1/image_raw namespace:=cam1
    ros2 launch box_segmentation segment.launch.py checkpoint:=model.pt image_topic:=/camera/color/image_raw \
        depth_topic:=/camera/aligned_depth_to_color/image_raw camera_info_topic:=/camera/color/camera_info
    ros2 launch box_segmentation segment.launch.py checkpoint:=model.pt autostart:=false  # for a lifecycle manager

The topic arguments (REMAPPINGS) remap the node's relative input names; depth_topic also turns use_depth on.
The arguments in OVERRIDES override the params file only when given: left empty, the file's values stand
(config/segment.yaml unless params_file says otherwise).
"""

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# Launch arguments that override node parameters of the same name.
OVERRIDES = {
    "checkpoint": "Path of the model checkpoint (.pt); required unless the params file sets it.",
    "device": "auto, cpu, cuda or cuda:N (the params file's default: auto).",
    "cameras": "Camera names, e.g. \"[left, right]\": inputs under <camera>/, outputs under <camera>/box_masks.",
    "continuous": "false: segment only the frames asked for on ~/segment (the params file's default: true).",
    "autostart": "false: stay unconfigured until a lifecycle manager configures and activates the node.",
}
# Launch arguments that remap the node's relative input names: argument -> node name.
REMAPPINGS = {
    "image_topic": ("image", "Input image topic, e.g. /camera/color/image_raw (its /compressed too)."),
    "depth_topic": ("depth", "Aligned depth image topic (16UC1 or 32FC1) for pick poses; turns use_depth on."),
    "camera_info_topic": ("camera_info", "CameraInfo of the colour camera; needed with depth_topic."),
}


def segment_node(context):
    # Resolved here so that empty arguments can be left out: an empty override would
    # replace the params file's value with "".
    given = {name: LaunchConfiguration(name).perform(context) for name in (*OVERRIDES, *REMAPPINGS)}
    # Typed as in a params file: "false" a boolean, "[left, right]" a list.
    overrides = {name: yaml.safe_load(given[name]) for name in OVERRIDES if given[name]}
    remappings = [(node_name, given[argument]) for argument, (node_name, _) in REMAPPINGS.items() if given[argument]]
    if given["image_topic"]:  # image_transport's compressed topic sits under the raw one
        remappings.append(("image/compressed", given["image_topic"] + "/compressed"))
    if given["depth_topic"]:
        overrides["use_depth"] = True
    profile = LaunchConfiguration("fastdds_profile").perform(context)
    return [Node(
        package="box_segmentation",
        executable="segment_node",
        name="segment_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=remappings,
        additional_env={"FASTDDS_DEFAULT_PROFILES_FILE": profile} if profile else None,
        output="screen",
        emulate_tty=True,
        # Required: when the node ends, a failed start included, the launch ends (also a bring-up including this).
        on_exit=Shutdown(reason="segment_node exited"),
    )]


def generate_launch_description():
    share = get_package_share_directory("box_segmentation")
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value="", description=text) for name, text in OVERRIDES.items()),
        *(DeclareLaunchArgument(name, default_value="", description=text) for name, (_, text) in REMAPPINGS.items()),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "segment.yaml"),
                              description="Parameters file for segment_node."),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its relative topics."),
        DeclareLaunchArgument("fastdds_profile", default_value=os.path.join(share, "config",
                                                                            "fastdds_large_frames.xml"),
                              description="Fast DDS profile with a 32 MB shared-memory segment, so camera-sized "
                                          "frames pass between processes on this host; empty: Fast DDS's default."),
        OpaqueFunction(function=segment_node),
    ])
