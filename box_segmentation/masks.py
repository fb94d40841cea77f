"""Instance masks: from the model's 28x28 mask probabilities to cropped binary masks, and their shape.

Coordinates follow msg/BoxMask.msg: x right, y down, origin at the top-left corner of the
top-left pixel, so pixel (u, v) covers [u, u+1) x [v, v+1) and its centre is (u + 0.5, v + 0.5).
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks


@dataclass(frozen=True)
class BoxCrop:
    """A binary mask covering one detection box (clipped to the image), before tightening."""

    x_offset: int
    y_offset: int
    mask: np.ndarray  # (h, w) uint8, 0/1


@dataclass(frozen=True)
class MaskShape:
    roi: tuple[int, int, int, int]  # x_offset, y_offset, width, height: tight box of the mask pixels
    mask: np.ndarray  # (roi height, roi width) uint8, C-contiguous
    area: int
    centroid: tuple[float, float]
    rotated_rect: tuple[float, float, float, float, float]  # cx, cy, length, width, angle


def masks_in_boxes(mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                   threshold: float) -> list[BoxCrop]:
    """Thresholded masks, each resized to its own box only: never pasted into a full frame.

    mask_probs: (N, M, M) probabilities from the mask head; boxes: (N, 4) x1, y1, x2, y2 in
    the original image. The resize is torchvision's paste_masks_in_image restricted to the
    box (same 1-pixel padding, box expansion and bilinear resize), run on the tensors'
    device; only the cropped uint8 masks come back to the host, in one transfer.
    On the CPU it runs on torch's process-wide thread count, which is set once for the process, not
    here per frame: on a busy CPU its many tiny ops wait for descheduled workers (10 masks, 2 loaded
    cores: p95 5 ms on one thread, 77 ms on two).
    """
    if len(boxes) == 0:
        return []
    height, width = image_size
    padded, scale = expand_masks(mask_probs[:, None].float(), padding=1)
    int_boxes = expand_boxes(boxes.float(), scale).to(torch.int64).tolist()
    # One resize per box: boxes differ in size, and torchvision's bilinear kernel is the arithmetic
    # paste_masks_in_image uses (a batched or OpenCV resize rounds differently and flips pixels).
    # Each box is resized straight into one buffer through the kernel F.interpolate calls (F.interpolate's
    # Python checks cost more than a small box's resize), then thresholded in one pass.
    sizes = [(max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)) for x1, y1, x2, y2 in int_boxes]
    resized = torch.empty(sum(h * w for h, w in sizes), dtype=torch.float32, device=mask_probs.device)
    start = 0
    for probs, (box_h, box_w) in zip(padded, sizes, strict=True):
        torch.ops.aten.upsample_bilinear2d.out(probs[None], [box_h, box_w], False,
                                               out=resized[start:start + box_h * box_w].view(1, 1, box_h, box_w))
        start += box_h * box_w
    if resized.device.type == "cpu":  # numpy's comparison is several times faster than torch's on one thread
        flat = np.greater(resized.numpy(), np.float32(threshold)).view(np.uint8)  # bool and uint8 share their bytes
    else:  # only the thresholded bytes cross to the host, in one transfer
        flat = torch.gt(resized, threshold).cpu().numpy().view(np.uint8)
    crops, start = [], 0
    for (x1, y1, _, _), (box_h, box_w) in zip(int_boxes, sizes, strict=True):
        box = flat[start:start + box_h * box_w].reshape(box_h, box_w)
        start += box_h * box_w
        # The part of the box inside the image, as paste_mask_in_image copies it.
        x0, y0 = max(x1, 0), max(y1, 0)
        crops.append(BoxCrop(x0, y0, box[y0 - y1:max(min(y1 + box_h, height) - y1, 0),
                                         x0 - x1:max(min(x1 + box_w, width) - x1, 0)]))
    return crops


def tight_roi(mask: np.ndarray) -> tuple[int, int, int, int]:
    """x, y, width, height of the smallest rectangle holding every nonzero pixel; zeros if none."""
    return tuple(int(v) for v in cv2.boundingRect(mask))


def centroid(mask: np.ndarray, x_offset: int = 0, y_offset: int = 0) -> tuple[float, float]:
    """Mean pixel centre (x, y) of the nonzero pixels; pixel (u, v) has its centre at (u + 0.5, v + 0.5)."""
    columns, rows = _pixel_counts(mask)
    if not columns.any():
        raise ValueError("centroid of an empty mask")
    return _centroid_of_counts(columns, rows, x_offset, y_offset)


def _pixel_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Column and row counts: several times faster than cv2.moments on a binary image.
    return (cv2.reduce(mask, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel(),
            cv2.reduce(mask, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel())


def _centroid_of_counts(columns, rows, x_offset, y_offset) -> tuple[float, float]:
    area = int(columns.sum())
    return (x_offset + float(columns @ np.arange(columns.size)) / area + 0.5,
            y_offset + float(rows @ np.arange(rows.size)) / area + 0.5)


def rotated_rect(mask: np.ndarray, x_offset: int = 0, y_offset: int = 0) -> tuple[float, float, float, float, float]:
    """Minimum-area rectangle around the mask, in msg/RotatedRect.msg's convention.

    Returns center_x, center_y, length, width, angle: length >= width, angle of the long side
    in radians from +x towards +y, in [-pi/2, pi/2). It is the rectangle around the pixel
    centres grown by half a pixel on every side: exact for an axis-aligned block (a run of n
    pixels measures n), and at most about one pixel larger than a drawn rectangle at 45 degrees.
    """
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise ValueError("rotated rectangle of an empty mask")
    (center_x, center_y), (side_w, side_h), degrees = cv2.minAreaRect(np.concatenate(contours).reshape(-1, 2))
    # The sides as cv2.boxPoints draws them: side_w along (cos, sin) of the angle, side_h along
    # (sin, -cos). Read this way, any OpenCV version's angle convention gives the same result.
    radians = math.radians(degrees)
    length, width, angle = (side_h, side_w, radians - math.pi / 2) if side_h >= side_w else (side_w, side_h, radians)
    angle = (angle + math.pi / 2) % math.pi - math.pi / 2  # the long side has no head: [-pi/2, pi/2)
    return (x_offset + center_x + 0.5, y_offset + center_y + 0.5, length + 1.0, width + 1.0, angle)


def describe(crop: BoxCrop) -> MaskShape | None:
    """Tight roi, cropped mask and shape measures of a box crop; None if the mask is empty."""
    x, y, w, h = cv2.boundingRect(crop.mask)
    if w == 0:
        return None
    mask = np.ascontiguousarray(crop.mask[y:y + h, x:x + w])
    columns, rows = _pixel_counts(mask)  # one pass each gives the area and centroid
    x_offset, y_offset = crop.x_offset + x, crop.y_offset + y
    return MaskShape(
        roi=(x_offset, y_offset, w, h),
        mask=mask,
        area=int(columns.sum()),
        centroid=_centroid_of_counts(columns, rows, x_offset, y_offset),
        rotated_rect=rotated_rect(mask, x_offset, y_offset),
    )
