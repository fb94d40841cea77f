"""Instance masks: from the model's 28x28 mask probabilities to cropped binary masks, and their shape.

Coordinates follow msg/BoxMask.msg: x right, y down, origin at the top-left corner of the
top-left pixel, so pixel (u, v) covers [u, u+1) x [v, v+1) and its centre is (u + 0.5, v + 0.5).
"""

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.models.detection.roi_heads import expand_masks


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
    rotated_rect: tuple[float, float, float, float, float]  # cx, cy, length, width, angle (_message_rect)


def shapes_in_boxes(mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                    threshold: float) -> list[MaskShape | None]:
    """The shape of each thresholded mask (None where it is empty), each resized to its own box only: never
    pasted into a full frame.

    mask_probs: (N, M, M) probabilities in [0, 1] from the mask head; boxes: (N, 4) x1, y1, x2, y2 in the image.
    The pixels are those of torchvision's paste_masks_in_image, restricted to the box (same 1-pixel padding, box
    expansion and bilinear resize): on the CPU resized by OpenCV, with the pixels near the threshold settled as
    torch's kernel computes them; on a GPU by torch's kernel on the device, and only the thresholded uint8 masks
    cross to the host, in one transfer. All masks are measured together. Thread counts are the process's, set
    once, never here per frame: on a busy CPU many tiny ops wait for descheduled workers (10 masks, 2 loaded
    cores: p95 5 ms on one torch thread, 77 ms on two).
    """
    flat, layout = _box_masks(mask_probs, boxes, threshold)
    height, width = image_size
    for start, x1, y1, box_h, box_w in layout.tolist():
        if x1 < 0 or y1 < 0 or x1 + box_w > width or y1 + box_h > height:
            # Pixels outside the image are not part of the mask (paste_mask_in_image drops them).
            box = flat[start:start + box_h * box_w].reshape(box_h, box_w)
            box[:max(-y1, 0)] = 0
            box[max(height - y1, 0):] = 0
            box[:, :max(-x1, 0)] = 0
            box[:, max(width - x1, 0):] = 0
    return _shapes(flat, layout)


def _box_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Every box's thresholded mask, one after another in one flat uint8 (0/1) host buffer, and where each
    lies: the layout, an (N, 5) int64 array of rows (start in the buffer, x1, y1 of the box in the image, box height,
    box width), kept in numpy as every later step reads its columns."""
    x1, y1, x2, y2 = _expanded_boxes(boxes.cpu().float().numpy(), mask_probs.shape[-1]).T
    heights, widths = np.maximum(y2 - y1 + 1, 1), np.maximum(x2 - x1 + 1, 1)
    sizes = heights * widths
    layout = np.stack([sizes.cumsum() - sizes, x1, y1, heights, widths], axis=1)
    total = int(sizes.sum())
    if mask_probs.device.type == "cpu":
        # expand_masks(padding=1); not np.pad, whose Python takes ten times as long.
        padded = np.zeros((len(mask_probs), mask_probs.shape[1] + 2, mask_probs.shape[2] + 2), np.float32)
        padded[:, 1:-1, 1:-1] = mask_probs.float().numpy()
        return _box_masks_opencv(padded, layout, total, threshold), layout
    # One resize per box (boxes differ in size) through the kernel F.interpolate calls, thresholded on the device;
    # only the thresholded bytes cross to the host, in one transfer (bool and uint8 share their bytes).
    padded, _ = expand_masks(mask_probs[:, None].float(), padding=1)
    resized = torch.empty(int(sizes.max(initial=0)), device=padded.device)
    binary = torch.empty(total, dtype=torch.bool, device=padded.device)
    for probs, (start, _, _, box_h, box_w) in zip(padded, layout.tolist(), strict=True):
        size = box_h * box_w
        torch.ops.aten.upsample_bilinear2d.out(probs[None], [box_h, box_w], False,
                                               out=resized[:size].view(1, 1, box_h, box_w))
        torch.gt(resized[:size], threshold, out=binary[start:start + size])
    return binary.cpu().numpy().view(np.uint8), layout


def _expanded_boxes(boxes: np.ndarray, mask_size: int) -> np.ndarray:
    """torchvision's expand_boxes(boxes, scale of expand_masks(padding=1)) as int64 pixel indices, computed as it
    does in float32 (bit for bit), in numpy: torch's dozen tiny ops on 50 boxes cost half a millisecond."""
    half, scale = np.float32(0.5), np.float32((mask_size + 2) / mask_size)
    x_half, y_half = (boxes[:, 2] - boxes[:, 0]) * half * scale, (boxes[:, 3] - boxes[:, 1]) * half * scale
    x_centre, y_centre = (boxes[:, 2] + boxes[:, 0]) * half, (boxes[:, 3] + boxes[:, 1]) * half
    return np.stack([x_centre - x_half, y_centre - y_half, x_centre + x_half, y_centre + y_half], 1).astype(np.int64)


# OpenCV's and torch's bilinear resizes compute a pixel's source coordinate with different float roundings (a few
# 1e-6 apart for a 30-pixel source), so from probabilities in [0, 1] their values differ by less than 1e-5
# (measured: at most 4.5e-6): a pixel further than this from the threshold lies on the same side of it in both.
_OPENCV_DISAGREEMENT = 2e-5
# Given torch's weights, its float32 value lies within five roundings of values in [0, 1] (5 * 2**-24 = 3.0e-7) of the
# exact one: products of the two weights (its kernel for small outputs), four products, three sums (measured: at most
# 1.4e-7). The narrower this margin, the fewer boxes torch's kernel resizes again.
_TORCH_ROUNDING = 4e-7


def _box_masks_opencv(padded: np.ndarray, layout: np.ndarray, total: int, threshold: float) -> np.ndarray:
    """_box_masks on the CPU for probabilities in [0, 1], with the pixels of torch's bilinear kernel (which
    paste_masks_in_image uses) in half its time: each box is resized by OpenCV (six times faster than torch's
    kernel on one thread), and the few pixels OpenCV puts near the threshold are settled with torch's own
    weights (_settle_near_threshold)."""
    resized = np.empty(int((layout[:, 3] * layout[:, 4]).max(initial=0)), np.float32)  # stays in the CPU cache
    above_low = np.empty(resized.size, bool)
    binary = np.empty(total, np.uint8)
    low, high = np.float32(threshold - _OPENCV_DISAGREEMENT), np.float32(threshold + _OPENCV_DISAGREEMENT)
    near_pixels = []
    for probs, (start, _, _, box_h, box_w) in zip(padded, layout.tolist(), strict=True):
        size = box_h * box_w
        cv2.resize(probs, (box_w, box_h), dst=resized[:size].reshape(box_h, box_w), interpolation=cv2.INTER_LINEAR)
        above_high = binary[start:start + size].view(bool)
        np.greater(resized[:size], high, out=above_high)
        np.greater(resized[:size], low, out=above_low[:size])
        # Some pixels are near the threshold (counted by OpenCV: np.count_nonzero's Python wrapper costs more).
        if cv2.countNonZero(above_low[:size]) != cv2.countNonZero(above_high):
            near_pixels.append(np.not_equal(above_low[:size], above_high, out=above_low[:size]).nonzero()[0] + start)
    if near_pixels:
        _settle_near_threshold(np.concatenate(near_pixels), padded, layout, threshold, binary)
    return binary


def _settle_near_threshold(pixels: np.ndarray, padded: np.ndarray, layout: np.ndarray, threshold: float,
                           binary: np.ndarray) -> None:
    """Set pixels (indices into binary) to torch's side of the threshold: their values recomputed exactly from
    torch's weights; a box with a pixel too close to call is resized again by torch's kernel."""
    starts, _, _, heights, widths = layout.T
    box = starts.searchsorted(pixels, side="right") - 1
    y, x = np.divmod(pixels - starts[box], widths[box])
    rows, columns = _torch_bilinear_weights(y, heights[box], padded.shape[1]), _torch_bilinear_weights(
        x, widths[box], padded.shape[2])
    lowest = highest = None  # over the roundings tried (one, unless the probe could not tell)
    for (y0, y1, wy0, wy1), (x0, x1, wx0, wx1) in ((row, column) for row in rows for column in columns):
        top = padded[box, y0, x0] * wx0 + padded[box, y0, x1] * wx1
        bottom = padded[box, y1, x0] * wx0 + padded[box, y1, x1] * wx1
        value = top * wy0 + bottom * wy1
        lowest, highest = (value, value) if lowest is None else (np.minimum(lowest, value), np.maximum(highest, value))
    above, below = lowest > threshold + _TORCH_ROUNDING, highest < threshold - _TORCH_ROUNDING
    binary[pixels[above]], binary[pixels[below]] = 1, 0
    for k in set(box[~(above | below)].tolist()):
        start, _, _, box_h, box_w = layout[k].tolist()
        resized = torch.empty(1, 1, box_h, box_w)
        torch.ops.aten.upsample_bilinear2d.out(torch.from_numpy(padded[k])[None, None], [box_h, box_w], False,
                                               out=resized)
        np.greater(resized.numpy().ravel(), np.float32(threshold), out=binary[start:start + box_h * box_w].view(bool))


def _torch_bilinear_weights(positions: np.ndarray, output_sizes: np.ndarray, input_size: int,
                            roundings: tuple[str, ...] | None = None) -> list:
    """The two source indices and their weights (float64 of torch's float32 weights) of output positions as
    torch's bilinear kernel computes them (align_corners=False), for each way of rounding
    scale * (position + 0.5) - 0.5 in roundings: "fused" (a fused multiply-add, one rounding) and "unfused"
    (two); by default the one this torch build uses (_torch_roundings)."""
    scale = np.float32(input_size) / output_sizes.astype(np.float32)
    centre = positions.astype(np.float32) + np.float32(0.5)
    sources = {"unfused": lambda: scale * centre - np.float32(0.5),
               "fused": lambda: (scale.astype(np.float64) * centre - 0.5).astype(np.float32)}  # exact, rounded once
    weights = []
    for rounding in roundings or _torch_roundings():
        source = np.maximum(sources[rounding](), np.float32(0))
        first = np.minimum(np.floor(source).astype(np.int64), input_size - 1)
        second_weight = np.minimum(np.maximum(source - first.astype(np.float32), np.float32(0)), np.float32(1))
        first_weight = np.float32(1) - second_weight  # rounded to float32, as torch stores it
        weights.append((first, first + (first < input_size - 1), first_weight.astype(np.float64),
                        second_weight.astype(np.float64)))
    return weights


@functools.cache
def _torch_roundings() -> tuple[str, ...]:
    """The rounding of the source coordinate torch's CPU kernel uses here (it depends on the instructions the build
    was compiled for), probed once on a resize where the two differ; both if the probe cannot tell them apart
    (then a pixel where they disagree goes to torch's kernel)."""
    checkerboard = (np.indices((30, 30)).sum(axis=0) % 2).astype(np.float32)  # neighbours 1 apart
    size = 1900  # source coordinates up to 30, where the two roundings differ by up to 2e-6
    # 30 columns in and out: each output column is its source column, so only the rows interpolate.
    expected = torch.ops.aten.upsample_bilinear2d(torch.from_numpy(checkerboard)[None, None], [size, 30],
                                                  False)[0, 0, :, 0].numpy()
    positions = np.arange(size)
    matching = []
    for rounding in ("fused", "unfused"):
        (y0, y1, wy0, wy1), = _torch_bilinear_weights(positions, np.full(size, size), 30, (rounding,))
        values = checkerboard[y0, 0] * wy0 + checkerboard[y1, 0] * wy1
        if np.abs(values - expected).max() < _TORCH_ROUNDING / 2:
            matching.append(rounding)
    return tuple(matching) if len(matching) == 1 else ("fused", "unfused")


def describe(crop: BoxCrop) -> MaskShape | None:
    """Tight roi, cropped mask and shape measures of a box crop; None if the mask is empty."""
    box_h, box_w = crop.mask.shape
    ones = np.not_equal(crop.mask, 0).view(np.uint8).ravel()
    layout = np.array([[0, crop.x_offset, crop.y_offset, box_h, box_w]], np.int64)
    return _shapes(ones, layout)[0] if ones.size else None


def _shapes(flat: np.ndarray, layout: np.ndarray) -> list[MaskShape | None]:
    """The shape of each mask in flat (0/1 bytes, masks one after another, each row by row; layout as _box_masks
    gives it), from the runs of ones along its rows: one pass over the pixels finds every run, and the areas,
    centroids, rois and rotated rectangles follow from the runs with numpy, for all masks at once. ndarray methods
    stand in for numpy functions with Python wrappers (np.searchsorted, np.repeat, ...): on these small arrays the
    wrappers cost about as much as the work."""
    if not len(layout):
        return []
    starts, _, _, heights, widths = layout.T
    first_rows = heights.cumsum() - heights  # each mask's first row, counting the rows of all masks
    # A run starts or ends where a pixel differs from the one before it.
    ones = flat.view(bool)
    edges = [_changes(ones)]
    if ones[0]:
        edges.insert(0, np.zeros(1, np.int64))
    if ones[-1]:
        edges.append(np.full(1, ones.size))
    edges = np.concatenate(edges)
    if edges.size == 0:
        return [None] * len(layout)
    run_bounds, mask, y, first = _runs_in_rows(edges, starts, widths)
    if (first + edges[1::2] - edges[0::2] > widths[mask]).any():
        # Some run goes on into the next row (or mask): it ends, and another starts, at every row start it covers.
        mask_of_row = np.repeat(np.arange(len(layout)), heights)
        row_starts = starts[mask_of_row] + (np.arange(mask_of_row.size) - first_rows[mask_of_row]) * widths[mask_of_row]
        wrapped = row_starts[1:][ones[row_starts[1:]] & ones[row_starts[1:] - 1]]
        edges = np.sort(np.concatenate([edges, wrapped, wrapped]), kind="stable")  # merged in linear time
        run_bounds, mask, y, first = _runs_in_rows(edges, starts, widths)
    run_start, run_end = edges[0::2], edges[1::2]
    length = run_end - run_start
    last = first + length - 1
    # Per mask, from its runs (masks without a run are empty).
    occupied = (run_bounds[1:] > run_bounds[:-1]).nonzero()[0]
    begin, end = run_bounds[occupied], run_bounds[occupied + 1]
    area = np.add.reduceat(length, begin)
    sum_x = np.add.reduceat(length * (first + last), begin) / 2  # a run's columns add up to length * (first + last) / 2
    sum_y = np.add.reduceat(length * y, begin)
    x_min, x_max = np.minimum.reduceat(first, begin), np.maximum.reduceat(last, begin)
    y_min, y_max = y[begin], y[end - 1]
    # The convex hull, and so the minimum-area rectangle, depends only on each row's first and last pixel, and of
    # those only on the ones further out than every row above them or every row below them.
    row = first_rows[mask] + y
    new_row = np.empty(row.size, bool)
    new_row[0] = True
    np.not_equal(row[1:], row[:-1], out=new_row[1:])
    row_begin = new_row.nonzero()[0]
    row_end = np.concatenate((row_begin[1:], [row.size])) - 1
    left, right, row_y, row_mask = first[row_begin], last[row_end], y[row_begin], mask[row_begin]
    keep = np.stack([_new_extremes(-left, row_mask), _new_extremes(right, row_mask)], axis=1).ravel()
    point_mask = row_mask.repeat(2)[keep]
    corners = np.zeros((len(layout), 2), np.int64)
    corners[occupied] = np.stack([x_min, y_min], axis=1)
    # Pixel indices from the tight roi's corner, as the rectangle's centre is measured from there.
    points = (np.stack([left, row_y, right, row_y], axis=1).reshape(-1, 2)[keep] - corners[point_mask]).astype(np.int32)
    point_bounds = point_mask.searchsorted(np.arange(len(layout) + 1))
    shapes = [None] * len(layout)
    measures = (occupied, area, sum_x, sum_y, x_min, x_max, y_min, y_max)
    boxes = layout.tolist()
    for k, count, sx, sy, x0, x1, y0, y1 in zip(*(values.tolist() for values in measures), strict=True):
        start, x_offset, y_offset, box_h, box_w = boxes[k]
        box = flat[start:start + box_h * box_w].reshape(box_h, box_w)
        shapes[k] = MaskShape(
            roi=(x_offset + x0, y_offset + y0, x1 + 1 - x0, y1 + 1 - y0),
            mask=np.ascontiguousarray(box[y0:y1 + 1, x0:x1 + 1]),
            area=count,
            centroid=(x_offset + sx / count + 0.5, y_offset + sy / count + 0.5),
            rotated_rect=_message_rect(cv2.minAreaRect(points[point_bounds[k]:point_bounds[k + 1]]), x_offset + x0,
                                       y_offset + y0),
        )
    return shapes


def _runs_in_rows(edges: np.ndarray, starts: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, ...]:
    """For runs between edges (starts and ends alternating) that each lie in one row: where each mask's runs begin
    (and the runs' count at the end), and each run's mask, row and first column in its mask. Each mask's runs lie
    between the runs before its start and the runs before the next: one search per mask, where one per run (about
    10,000 at 50 instances) would find its row."""
    run_start = edges[0::2]
    run_bounds = np.concatenate((run_start.searchsorted(starts), [run_start.size]))
    mask = np.arange(len(starts)).repeat(run_bounds[1:] - run_bounds[:-1])
    return run_bounds, mask, *np.divmod(run_start - starts[mask], widths[mask])


def _changes(ones: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """The positions p where ones[p] differs from ones[p - 1], in order. numpy's nonzero costs a call per hit on
    sparse data, so the hits are found among 8-byte words first, then the bytes of the words with one; a chunk at a
    time, so that the differences live in one small buffer the CPU keeps cached."""
    differs = np.empty((min(chunk, ones.size) + 7) // 8 * 8, bool)
    found = []
    for begin in range(1, ones.size, chunk):
        count = min(chunk, ones.size - begin)
        np.not_equal(ones[begin:begin + count], ones[begin - 1:begin - 1 + count], out=differs[:count])
        words = differs[:(count + 7) // 8 * 8]
        words[count:] = False
        words = words.view(np.uint64)
        hit_words = (words != 0).nonzero()[0]
        hit_bytes = words[hit_words].view(bool).nonzero()[0]
        found.append(hit_words[hit_bytes >> 3] * 8 + (hit_bytes & 7) + begin)
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _new_extremes(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Where values (in groups of consecutive entries, group ascending) exceed every earlier value of their group,
    or every later one."""
    offset = group * (2 * (int(np.abs(values).max()) + 1))  # lifts each group above all earlier ones
    from_start = values + offset
    from_end = (values - offset)[::-1]
    return ((from_start > np.maximum.accumulate(np.concatenate([[from_start[0] - 1], from_start[:-1]])))
            | (from_end > np.maximum.accumulate(np.concatenate([[from_end[0] - 1], from_end[:-1]])))[::-1])


def _message_rect(rect, x_offset: int, y_offset: int) -> tuple[float, float, float, float, float]:
    """cv2.minAreaRect's rectangle around pixel indices, in msg/RotatedRect.msg's convention: center_x, center_y,
    length, width, angle, with length >= width and the angle of the long side in radians from +x towards +y, in
    [-pi/2, pi/2). It is the rectangle around the pixel centres grown by half a pixel on every side: exact for an
    axis-aligned block (a run of n pixels measures n), and at most about one pixel larger than a drawn rectangle at
    45 degrees."""
    (center_x, center_y), (side_w, side_h), degrees = rect
    # The sides as cv2.boxPoints draws them: side_w along (cos, sin) of the angle, side_h along
    # (sin, -cos). Read this way, any OpenCV version's angle convention gives the same result.
    radians = math.radians(degrees)
    length, width, angle = (side_h, side_w, radians - math.pi / 2) if side_h >= side_w else (side_w, side_h, radians)
    angle = (angle + math.pi / 2) % math.pi - math.pi / 2  # the long side has no head: [-pi/2, pi/2)
    return (x_offset + center_x + 0.5, y_offset + center_y + 0.5, length + 1.0, width + 1.0, angle)
