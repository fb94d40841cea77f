"""Temporal depth averaging: each pixel's mean over the last few depth frames of a scene that holds still.

A pallet does not move between two picks, and a stereo camera's subpixel disparity noise is largely independent
from frame to frame: the mean of n frames has 1/sqrt(n) of it. What does not average away stays: the depth grid,
misregistration, bulging tops, shadows, tape (synthetic.stereo_depth.stereo_frames says which is which).

As RealSense's temporal filter (librealsense rs2::temporal_filter, in its post-processing), per pixel:
- a frame without depth there (0 or NaN) adds nothing: the pixel keeps the mean of the frames that measured it;
- a measurement further from the pixel's mean than reset_steps depth steps at that distance (the camera's
  step, depth_step_at_1m times z²: noise is a fraction of a step, a carton picked away is a hundred) means the
  scene changed there: the pixel's history is dropped and it starts again from this frame's value
  (librealsense's delta threshold), never a blend of before and after;
- a pixel needs depth in at least half of the frames since its history began (the window, or fewer since a
  restart), otherwise it has no depth (NaN): a pixel that one frame in eight measured is a flicker on a dark
  surface, not a surface. Right after a restart the newest value counts alone, as in librealsense: a pixel
  beside a depth edge, where flying pixels restart it often, keeps a single frame's depth rather than none
  (blanking those would move every depth edge, and the registration check reads them).
librealsense's filter is an exponential average inside the camera's SDK, for its own cameras; this one is a
plain window (a known, short memory) over the aligned depth images any camera driver publishes on ROS.
Running sums: the cost per frame is a few passes over the image whatever the window.
"""

import numpy as np

from box_segmentation.pick_pose import measured_depth


class TemporalDepthAverage:
    """Feed depth frames (metres, float; 0, NaN or outside pick_pose.DEPTH_RANGE_M = no depth) of one camera in
    order with add(); each call returns the averaged depth (float32 metres, NaN = none) of the last `frames`
    frames."""

    def __init__(self, frames: int, depth_step_at_1m: float = 0.0025, reset_steps: float = 4.0):
        if frames < 1:
            raise ValueError(f"frames to average must be at least 1, not {frames}")
        self.frames = frames
        self.depth_step_at_1m, self.reset_steps = depth_step_at_1m, reset_steps
        self._shape = None

    def reset(self, shape: tuple[int, int]) -> None:
        """Forget every frame: the next ones are of a new scene (or size)."""
        self._shape = shape
        self._values = np.zeros((self.frames, *shape), np.float32)  # ring buffer, 0 where a frame had no depth
        self._valid = np.zeros((self.frames, *shape), bool)
        self._sum = np.zeros(shape, np.float64)  # float64: adding and taking away values leaves no drift
        self._count = np.zeros(shape, np.int32)  # frames in the window with depth
        self._age = np.zeros(shape, np.int32)  # frames in the window since the pixel's history began
        self._next = 0  # the slot the next frame takes: the oldest

    def add(self, depth: np.ndarray) -> np.ndarray:
        """The average including this (H, W) frame; a frame of another size than the last starts afresh."""
        if depth.ndim != 2:
            raise ValueError(f"depth must be one (height, width) image, not of shape {depth.shape}")
        if depth.shape != self._shape:
            self.reset(depth.shape)
        slot = self._next
        self._next = (slot + 1) % self.frames
        self._sum -= self._values[slot]  # the oldest frame leaves the window
        self._count -= self._valid[slot]
        self._age += self._age < self.frames

        # Outside pick_pose.DEPTH_RANGE_M (inf too) is no depth: one inf summed in would leave the pixel NaN for good.
        measured = measured_depth(depth)
        value = np.where(measured, depth, np.float32(0)).astype(np.float32, copy=False)
        mean = self._mean()
        tolerance = np.float32(self.reset_steps * self.depth_step_at_1m) * mean * mean
        changed = measured & (self._count > 0) & (np.abs(value - mean) > tolerance)
        restart = np.flatnonzero(changed)  # flat indices: a tenth of the cost of a mask over every frame
        self._values.reshape(self.frames, -1)[:, restart] = 0
        self._valid.reshape(self.frames, -1)[:, restart] = False
        self._sum.reshape(-1)[restart] = 0
        self._count.reshape(-1)[restart] = 0
        self._age.reshape(-1)[restart] = 1

        self._values[slot], self._valid[slot] = value, measured
        self._sum += value
        self._count += measured
        averaged = self._mean()
        averaged[2 * self._count < self._age] = np.nan
        return averaged

    def _mean(self) -> np.ndarray:
        """Each pixel's mean over its frames in the window as float32, 0 where none measured it."""
        return (self._sum / np.maximum(self._count, 1)).astype(np.float32)
