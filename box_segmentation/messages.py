"""Segmenter instances to and from box_segmentation/BoxMasks messages (no rclpy needed).

A pick planner in Python reads the masks with two lines:
    from box_segmentation.messages import cropped_masks
    masks = cropped_masks(msg)  # one (roi.height, roi.width) uint8 array per box

With depth, add_poses fills each box's pick pose fields from pick_pose.estimate_poses and pick_order.
"""

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion
from std_msgs.msg import Header

from box_segmentation.msg import BoxMask, BoxMasks
from box_segmentation.pick_pose import CartonPose, PoseStatus
from box_segmentation.types import Instance


def to_box_masks(instances: list[Instance], header, height: int, width: int) -> BoxMasks:
    """BoxMasks for one image: header copied from the image, ids 0..n-1 in the given (score) order."""
    msg = BoxMasks(header=_copy_header(header), height=int(height), width=int(width))
    for index, instance in enumerate(instances):
        # Filled in place: a BoxMask builds its own roi, rotated_rect and mask array whatever it is given, and copies
        # a mask passed to it before its setter copies it again.
        box = BoxMask(id=index, class_id=instance.class_id, class_name=instance.class_name, score=float(instance.score),
                      area=int(instance.area), centroid_x=float(instance.centroid[0]),
                      centroid_y=float(instance.centroid[1]))
        roi = box.roi
        roi.x_offset, roi.y_offset, roi.width, roi.height = instance.roi  # do_rectify stays False
        rect = box.rotated_rect
        rect.center_x, rect.center_y, rect.length, rect.width, rect.angle = (float(v) for v in instance.rotated_rect)
        # Its own (empty) array.array extended straight from numpy's buffer: one copy, and no per-element checks
        # even where ROS_PYTHON_CHECK_FIELDS turns them on.
        box.mask.frombytes(np.ascontiguousarray(instance.mask, dtype=np.uint8))
        msg.boxes.append(box)
    return msg


def add_poses(msg: BoxMasks, poses: list[CartonPose], order: list[int]) -> BoxMasks:
    """Fill every box's pose fields (BoxMask.msg: pose_status to pick_rank), in place; returns msg.

    poses: one per box, in msg.boxes' order (estimate_poses of the same instances); order: pick_order's
    indices, the box to pick first first. Boxes without an OK pose keep the default pose and zero sizes.
    """
    if len(poses) != len(msg.boxes) or sorted(order) != list(range(len(msg.boxes))):
        raise ValueError(f"{len(msg.boxes)} boxes need one pose each and an order of all of them, got "
                         f"{len(poses)} poses and order {order}")
    for rank, index in enumerate(order):
        box, pose = msg.boxes[index], poses[index]
        box.pose_status = int(pose.status)
        box.pose_quality = float(pose.quality)
        box.pick_rank = rank
        if pose.status == PoseStatus.OK:
            x, y, z, w = pose.quaternion
            box.pose = Pose(position=Point(x=float(pose.position[0]), y=float(pose.position[1]),
                                           z=float(pose.position[2])),
                            orientation=Quaternion(x=x, y=y, z=z, w=w))
            box.top_length, box.top_width = float(pose.length), float(pose.width)
    return msg


def cropped_masks(msg: BoxMasks) -> list[np.ndarray]:
    """Each box's mask as a (roi.height, roi.width) uint8 array (a view of the message data)."""
    return [_mask_of(box) for box in msg.boxes]


def full_frame_masks(msg: BoxMasks) -> np.ndarray:
    """(N, height, width) uint8: each box's mask placed at its roi in an image-sized frame."""
    frames = np.zeros((len(msg.boxes), msg.height, msg.width), dtype=np.uint8)
    for frame, box in zip(frames, msg.boxes, strict=True):
        roi = box.roi
        if roi.x_offset + roi.width > msg.width or roi.y_offset + roi.height > msg.height:
            raise ValueError(f"box {box.id}: roi {roi.width}x{roi.height} at ({roi.x_offset}, {roi.y_offset}) "
                             f"reaches past the {msg.width}x{msg.height} image")
        frame[roi.y_offset:roi.y_offset + roi.height, roi.x_offset:roi.x_offset + roi.width] = _mask_of(box)
    return frames


def instances_from_msg(msg: BoxMasks) -> list[Instance]:
    """Instances back from a message (e.g. a recorded bag). The message has no model box, so
    box is the roi's rectangle (x, y, x + width, y + height)."""
    instances = []
    for box in msg.boxes:
        roi = box.roi
        rect = box.rotated_rect
        instances.append(Instance(
            box=(float(roi.x_offset), float(roi.y_offset), float(roi.x_offset + roi.width),
                 float(roi.y_offset + roi.height)),
            score=float(box.score),
            class_id=int(box.class_id),
            class_name=box.class_name,
            roi=(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)),
            mask=_mask_of(box).copy(),
            area=int(box.area),
            centroid=(float(box.centroid_x), float(box.centroid_y)),
            rotated_rect=(float(rect.center_x), float(rect.center_y), float(rect.length), float(rect.width),
                          float(rect.angle)),
        ))
    return instances


def _mask_of(box) -> np.ndarray:
    roi = box.roi
    try:
        flat = np.frombuffer(box.mask, dtype=np.uint8)
    except TypeError:  # a list, from hand-made or converted messages
        flat = np.asarray(box.mask, dtype=np.uint8)
    if flat.size != roi.width * roi.height:
        raise ValueError(f"box {box.id}: mask has {flat.size} bytes, roi {roi.width}x{roi.height} needs "
                         f"{roi.width * roi.height}")
    return flat.reshape(roi.height, roi.width)


def stamp_ns(header) -> int:
    """A header's stamp in nanoseconds: how frames, depth images and results are matched."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _copy_header(header) -> Header:
    # Field by field, so a header from another message library (e.g. rosbags) works too.
    stamp = Time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec))
    return Header(stamp=stamp, frame_id=str(header.frame_id))
