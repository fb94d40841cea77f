"""Pick poses for one published frame from its paired depth image and CameraInfo, without rclpy."""

from box_segmentation.image_conversion import depth_image_to_array
from box_segmentation.messages import add_poses
from box_segmentation.msg import BoxMasks
from box_segmentation.pick_pose import CartonPose, Intrinsics, depth_to_metres, estimate_poses, pick_order


class NoPoses(Exception):
    """Why a frame goes out without poses: event is its diagnostics count (diagnostics.NO_POSE_REASONS)."""

    def __init__(self, event: str, message: str):
        super().__init__(message)
        self.event = event


def fill_poses(result: BoxMasks, instances, depth, info, divisor: float, up, tolerance: float) -> list[CartonPose]:
    """Fills result's pose fields (in place) from depth (None: none paired) and the colour camera's CameraInfo
    (None: none yet); the poses, one per box. Raises NoPoses when the frame cannot have any."""
    height, width = result.height, result.width
    if depth is None:
        raise NoPoses("no depth match", f"no depth image within {tolerance} s of the colour image's stamp")
    if info is None:
        raise NoPoses("no camera info", "no CameraInfo received yet on camera_info")
    if (info.width, info.height) != (width, height) or not (info.k[0] > 0 and info.k[4] > 0):
        raise NoPoses("no camera info", f"CameraInfo is {info.width}x{info.height} with fx {info.k[0]}, fy "
                                        f"{info.k[4]} but the colour image is {width}x{height}: it must be the "
                                        f"colour camera's, calibrated")
    try:
        depth_m = depth_to_metres(depth_image_to_array(depth), depth.encoding, (height, width), divisor)
    except ValueError as error:
        raise NoPoses("bad depth", str(error)) from error
    poses = estimate_poses(instances, depth_m, Intrinsics.from_k(info.k), up=up)
    add_poses(result, poses, pick_order(instances, poses, (height, width), up=up))
    return poses
