"""Deterministic detections and BoxMasks built from them by the project's message helpers, from a seed."""

import numpy as np
from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from box_segmentation.masks import BoxCrop, describe
from box_segmentation.messages import add_poses, to_box_masks
from box_segmentation.pick_pose import CartonPose, PoseStatus
from box_segmentation.types import Instance

HEIGHT, WIDTH = 720, 1280


def sample_detections(seed: int, count: int = 5) -> tuple[Header, list[Instance], list[CartonPose], list[int]]:
    """A header, instances with real masks (rectangles with a notch) as Segmenter gives them, one pose each (OK or
    not) and a pick order."""
    rng = np.random.default_rng(seed)
    header = Header(stamp=Time(sec=int(rng.integers(1, 2**31 - 1)), nanosec=int(rng.integers(0, 10**9))),
                    frame_id=f"camera_{seed}_color_optical_frame")
    instances, poses = [], []
    for index in range(count):
        x, y = int(rng.integers(0, WIDTH - 300)), int(rng.integers(0, HEIGHT - 240))
        w, h = int(rng.integers(20, 280)), int(rng.integers(20, 220))
        crop = np.zeros((h + 4, w + 4), np.uint8)
        crop[2:-2, 2:-2] = 1
        crop[2:h // 3, 2:w // 3] = 0  # a notch, so masks differ from their boxes
        shape = describe(BoxCrop(x, y, crop))
        instances.append(Instance(
            box=(float(x), float(y), float(x + w + 4), float(y + h + 4)), score=float(1 - index / (count + 1)),
            class_id=1, class_name="carton", roi=shape.roi, mask=shape.mask, area=shape.area, centroid=shape.centroid,
            rotated_rect=shape.rotated_rect))
        if index % 2:
            poses.append(CartonPose(PoseStatus.SPARSE_DEPTH, quality=0.1, points=12))
        else:
            rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
            rotation *= np.sign(np.linalg.det(rotation))  # a proper rotation
            poses.append(CartonPose(PoseStatus.OK, quality=float(rng.random()), points=500,
                                    position=rng.uniform(-1, 2, 3), rotation=rotation, length=0.4, width=0.3))
    order = [int(i) for i in rng.permutation(count)]
    return header, instances, poses, order


def sample_box_masks(seed: int, count: int = 5):
    """The BoxMasks that segment_node publishes for sample_detections(seed, count)."""
    header, instances, poses, order = sample_detections(seed, count)
    return add_poses(to_box_masks(instances, header, HEIGHT, WIDTH), poses, order)
