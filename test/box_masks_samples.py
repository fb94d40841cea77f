"""Deterministic BoxMasks messages for tests, from a seed."""

import array

import numpy as np

from box_segmentation.msg import BoxMask, BoxMasks


def sample_box_masks(seed: int, count: int = 5) -> BoxMasks:
    rng = np.random.default_rng(seed)
    msg = BoxMasks()
    msg.header.stamp.sec = int(rng.integers(1, 2**31 - 1))
    msg.header.stamp.nanosec = int(rng.integers(0, 10**9))
    msg.header.frame_id = f"camera_{seed}_color_optical_frame"
    msg.height, msg.width = 720, 1280
    for index in range(count):
        box = BoxMask()
        box.id = index
        box.class_id = 1
        box.class_name = "carton"
        box.score = float(rng.random())
        box.roi.x_offset = int(rng.integers(0, 1000))
        box.roi.y_offset = int(rng.integers(0, 500))
        box.roi.width = int(rng.integers(1, 280))
        box.roi.height = int(rng.integers(1, 220))
        mask = rng.integers(0, 2, size=(box.roi.height, box.roi.width), dtype=np.uint8)
        box.mask = array.array("B", mask.tobytes())
        box.area = int(mask.sum())
        box.centroid_x, box.centroid_y = (float(v) for v in rng.random(2) * 700)
        box.rotated_rect.center_x, box.rotated_rect.center_y = box.centroid_x, box.centroid_y
        box.rotated_rect.length, box.rotated_rect.width = 120.5, 80.25
        box.rotated_rect.angle = float(rng.uniform(-np.pi / 2, np.pi / 2))
        msg.boxes.append(box)
    return msg
