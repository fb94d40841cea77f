"""Plain data shared by inference, messages and pick poses: numpy only, so a pick planner needs no torch."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Instance:
    """One detected carton. Coordinates follow msg/BoxMask.msg: pixel (u, v) covers [u, u+1) x [v, v+1)."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels, from the model
    score: float
    class_id: int  # 1-based index into classes
    class_name: str
    roi: tuple[int, int, int, int]  # x_offset, y_offset, width, height: tight box of the mask pixels
    mask: np.ndarray  # (roi height, roi width) uint8, 1 inside, 0 outside, C-contiguous
    area: int  # mask pixel count
    centroid: tuple[float, float]  # mean pixel centre (x, y); pixel (u, v) has its centre at (u + 0.5, v + 0.5)
    rotated_rect: tuple[float, float, float, float, float]  # center x, y, length >= width, width, angle rad
