"""Pick poses for one published frame from its paired depth image and CameraInfo, without rclpy."""

from typing import NamedTuple

import numpy as np

from box_segmentation.camera_model import CameraInfoError, camera_model_from_info
from box_segmentation.depth_filter import TemporalDepthAverage
from box_segmentation.image_conversion import depth_image_to_array
from box_segmentation.messages import add_poses
from box_segmentation.msg import BoxMasks
from box_segmentation.pick_pose import CartonPose, depth_to_metres, estimate_poses, pick_order
from box_segmentation.registration import RegistrationCheck


class NoPoses(Exception):
    """Why a frame goes out without poses: event is its diagnostics count (diagnostics.NO_POSE_REASONS)."""

    def __init__(self, event: str, message: str):
        super().__init__(message)
        self.event = event


class AveragedDepth(NamedTuple):
    """A depth image's header with its camera's temporal average up to it (depth_average_frames)."""

    header: object
    metres: np.ndarray  # float32, NaN = no depth


def averaged_depth(average: TemporalDepthAverage, msg, divisor: float):
    """msg (a depth sensor_msgs/Image) averaged with its camera's previous ones, or msg itself when it cannot be
    read: fill_poses then says why for the frame it pairs with, as without averaging."""
    try:
        metres = depth_to_metres(depth_image_to_array(msg), msg.encoding, (msg.height, msg.width), divisor)
    except ValueError:
        return msg
    return AveragedDepth(msg.header, average.add(metres))


def fill_poses(result: BoxMasks, instances, depth, info, params: dict,
               registration: RegistrationCheck) -> list[CartonPose]:
    """Fills result's pose fields (in place) from depth (a depth Image or an AveragedDepth; None: none paired) and
    the colour camera's CameraInfo (None: none yet); the poses, one per box. Raises NoPoses when the frame cannot
    have any.

    params: the node's (depth_divisor, up_in_camera, depth_sync_tolerance, camera_geometry). registration
    watches colour-depth misregistration and moves the depth back by the offset it is sure of."""
    divisor, up, tolerance = params["depth_divisor"], params["up_in_camera"], params["depth_sync_tolerance"]
    height, width = result.height, result.width
    if depth is None:
        raise NoPoses("no depth match", f"no depth image within {tolerance} s of the colour image's stamp")
    if info is None:
        raise NoPoses("no camera info", "no CameraInfo received yet on camera_info")
    if (info.width, info.height) != (width, height):
        raise NoPoses("no camera info", f"CameraInfo is {info.width}x{info.height} but the colour image is "
                                        f"{width}x{height}: it must be the colour camera's")
    try:
        intrinsics = camera_model_from_info(info, params["camera_geometry"])
    except CameraInfoError as error:
        raise NoPoses("no camera info", str(error)) from error
    try:
        if isinstance(depth, AveragedDepth):
            depth_m = depth_to_metres(depth.metres, "32FC1", (height, width))
        else:
            depth_m = depth_to_metres(depth_image_to_array(depth), depth.encoding, (height, width), divisor)
    except ValueError as error:
        raise NoPoses("bad depth", str(error)) from error
    registration.add(instances, depth_m)
    depth_m = registration.corrected(depth_m)
    poses = estimate_poses(instances, depth_m, intrinsics, up=up)
    add_poses(result, poses, pick_order(instances, poses, (height, width), up=up))
    return poses
