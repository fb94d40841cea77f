"""Colour-depth registration check: how far the aligned depth image sits off the colour image, from the masks.

A carton's mask edge (from the colour image) is where its depth jumps to whatever lies behind it; when the
depth image is shifted against the colour image (a wrong depth-to-colour extrinsic, the commonest field
error, and silent: poses just come out worse), its depth edges run parallel to the mask edges at a
constant offset. RegistrationCheck scores every offset within max_shift_px by how much depth edge lies
under the mask edges moved by it, sums the scores over the last `frames` frames and reports the best one,
to a tenth of a pixel. No ROS here; the node adds each frame and puts offset() in /diagnostics.

Depth edges are the near side of a jump of at least edge_jump metres; holes (stereo shadows beside a nearer
surface, glossy or dark patches) are first filled with the farthest depth around them, so a shadow does not
move an edge. Mask edges between cartons at the same height have no depth edge and add nothing.
"""

import threading
from collections import deque

import cv2
import numpy as np

from box_segmentation.pick_pose import measured_depth


class RegistrationCheck:
    """add() from one thread and offset() from another is fine. Every `every`-th frame added is scored (about
    10 ms at 640x480): misregistration is a calibration error, it does not change from frame to frame."""

    def __init__(self, max_shift_px: int = 6, frames: int = 30, every: int = 1, edge_jump: float = 0.03,
                 samples_per_frame: int = 2000, min_edge_share: float = 0.05, seed: int = 0):
        self.max_shift_px = max_shift_px
        self.every = every
        self._added = 0
        self._lock = threading.Lock()
        self.edge_jump = edge_jump
        self.samples_per_frame = samples_per_frame
        self.min_edge_share = min_edge_share
        self._frames = deque(maxlen=frames)  # per frame: (score sums per offset, mask edge pixels scored)
        self._rng = np.random.default_rng(seed)
        span = np.arange(-max_shift_px, max_shift_px + 1)
        self._dy, self._dx = (offsets.ravel() for offsets in np.meshgrid(span, span, indexing="ij"))

    def add(self, instances, depth_m: np.ndarray) -> None:
        """One frame: the instances (.roi, .mask) and the depth (metres; 0, NaN or outside pick_pose.DEPTH_RANGE_M =
        none) aligned to their image."""
        self._added += 1
        if (self._added - 1) % self.every:
            return
        rows, cols = _mask_edges(instances, depth_m.shape)
        if len(rows) > self.samples_per_frame:  # a spread-out sample: plenty for a shift, at a fixed cost
            keep = self._rng.choice(len(rows), self.samples_per_frame, replace=False)
            rows, cols = rows[keep], cols[keep]
        # Padded by the largest offset, so every offset of every edge pixel is one flat index.
        edges = np.pad(_depth_edges(depth_m, self.edge_jump), self.max_shift_px)
        width = edges.shape[1]
        starts = (rows + self.max_shift_px) * width + cols + self.max_shift_px
        scores = edges.ravel()[starts[:, None] + (self._dy * width + self._dx)[None]].sum(axis=0)
        with self._lock:
            self._frames.append((scores, len(rows)))

    def offset(self) -> tuple[float, float] | None:
        """(dx, dy) pixels the depth image sits right and down of the colour image, over the recent frames;
        None while the masks' edges show too little depth edge to tell (a flat scene, no depth)."""
        with self._lock:
            frames = list(self._frames)
        if not frames:
            return None
        scores = np.sum([scores for scores, _ in frames], axis=0)
        scored = sum(count for _, count in frames)
        size = 2 * self.max_shift_px + 1
        grid = scores.reshape(size, size)
        row, col = np.unravel_index(int(np.argmax(grid)), grid.shape)
        # Too few mask edges on depth edges even at the best offset, or no offset better than the others.
        if grid[row, col] < self.min_edge_share * scored or grid[row, col] <= 1.5 * np.median(grid):
            return None
        return (col - self.max_shift_px + _vertex(grid[row, max(col - 1, 0):col + 2], col, size),
                row - self.max_shift_px + _vertex(grid[max(row - 1, 0):row + 2, col], row, size))


    def corrected(self, depth_m: np.ndarray) -> np.ndarray:
        """depth_m moved back onto the colour image by the offset found, in whole pixels (NaN where nothing moves
        in); as is while the offset is unknown or under half a pixel."""
        offset = self.offset()
        if offset is None:
            return depth_m
        dx, dy = (-round(value) for value in offset)
        if dx == 0 and dy == 0:
            return depth_m
        height, width = depth_m.shape
        moved = np.full(depth_m.shape, np.nan, np.float32)
        moved[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
            depth_m[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
        return moved


def _vertex(values, index, size) -> float:
    """Sub-pixel peak: the vertex of the parabola through the peak and its two neighbours (0 at the border)."""
    if index in (0, size - 1):
        return 0.0
    left, centre, right = values
    curvature = left - 2 * centre + right
    return float(0.5 * (left - right) / curvature) if curvature < 0 else 0.0


def _mask_edges(instances, image_size) -> tuple[np.ndarray, np.ndarray]:
    """Image rows and columns of every mask's own edge pixels (inside the mask, beside a pixel outside it)."""
    rows, cols = [], []
    for instance in instances:
        x, y = instance.roi[:2]
        mask = instance.mask.astype(np.uint8)
        inner = cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
        r, c = np.nonzero(mask > inner)
        rows.append(r + y)
        cols.append(c + x)
    if not rows:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(rows), np.concatenate(cols)


def _depth_edges(depth_m, edge_jump) -> np.ndarray:
    """(H, W) float32: 1 on the near side of each depth jump, blurred over a pixel so offsets score smoothly."""
    depth = np.where(measured_depth(depth_m), depth_m, 0).astype(np.float32)
    # Holes take the farthest depth within 4 pixels: shadows beside an edge belong to the surface behind it.
    farthest = cv2.dilate(depth, np.ones((9, 9), np.uint8))
    filled = np.where(depth > 0, depth, farthest)
    jump = cv2.dilate(filled, np.ones((3, 3), np.uint8)) - filled
    edges = ((filled > 0) & (jump > edge_jump)).astype(np.float32)
    return cv2.GaussianBlur(edges, (0, 0), 1.0)
