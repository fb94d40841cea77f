"""SCD's COCO annotations as training reads them: which to keep, and their masks in the image's frame.

training/coco_data.py (the loader evaluate.py scores with) and the bag replay's scorer both use
these, so a replayed frame is scored against exactly the ground truth evaluate.py uses: the same
instances dropped, the same masks rescaled where the json size differs from the image's.
Nothing here trusts the json: sizes, coordinates and entries are checked before anything is
rasterised, so a bad annotation costs a count in the report, never the process's memory.
"""

import math

import cv2
import numpy as np
from pycocotools import mask as mask_utils

# A json size this many times larger or smaller than the image file's is not a rescaled photo.
MAX_SIZE_RATIO = 8


def json_size(info: dict, file_size: tuple[int, int]) -> tuple[int, int] | None:
    """(width, height) an image entry claims, or None if it cannot be right (not positive whole
    numbers, or absurdly far from the file's (width, height))."""
    width, height = info["width"], info["height"]
    if not all(isinstance(v, int | float) and math.isfinite(v) and v >= 1 and v == int(v) for v in (width, height)):
        return None
    size = (int(width), int(height))
    ratios = (size[0] / file_size[0], size[1] / file_size[1])
    if not all(1 / MAX_SIZE_RATIO <= ratio <= MAX_SIZE_RATIO for ratio in ratios):
        return None
    return size


def check_annotation(annotation, size: tuple[int, int], label_of: dict, scale: tuple[float, float]) -> str | None:
    """Why an annotation is dropped (a report key), or None to keep it. size: the json's (width, height);
    scale: file size / json size."""
    if not isinstance(annotation, dict):
        return "malformed"
    if annotation.get("iscrowd", 0):
        return "crowd"
    if annotation.get("category_id") not in label_of:
        return "malformed"
    width, height = size
    segmentation = valid_segmentation(annotation.get("segmentation"), height, width)
    if segmentation is None:
        return "malformed"
    if isinstance(segmentation, list) and not _coordinates_in_range(segmentation, width, height):
        return "coordinates_out_of_range"
    try:
        area, box_width, box_height = _segmentation_extent(segmentation, height, width)
    except (ValueError, TypeError, IndexError):
        return "malformed"
    # Less than a pixel wide, high or large in the file's frame: nothing to learn from.
    if min(box_width * scale[0], box_height * scale[1], area * scale[0] * scale[1]) < 1:
        return "degenerate"
    return None


def valid_segmentation(segmentation, height: int, width: int):
    """The segmentation with malformed polygons removed, or None if nothing usable is left."""
    if isinstance(segmentation, list):  # one or several polygons [x0, y0, x1, y1, ...]
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                    and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p)]
        return polygons or None
    if isinstance(segmentation, dict) and list(segmentation.get("size", [])) == [height, width]:
        counts = segmentation.get("counts")
        if isinstance(counts, str):  # compressed RLE
            counts = compressed_run_lengths(counts)
        if (isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
                and sum(counts) == height * width):
            return segmentation  # run lengths (column-major) that cover the image exactly
    return None


def compressed_run_lengths(counts: str) -> list[int] | None:
    """The run lengths of a compressed RLE string (COCO's maskApi format: 5 bits a character from '0',
    0x20 to continue, runs after the second stored as the difference from the one two before), or
    None if it is not that format. pycocotools has no public call for this, and it does not check the
    runs against the size: short ones decode into a mask with uninitialised bytes, long ones fail
    only when the mask is decoded (2.0.11)."""
    runs, value, shift = [], 0, 0
    for character in counts:
        code = ord(character) - 48
        if not 0 <= code < 64:
            return None
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:  # sign bit of the last group
            value -= 1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
        value, shift = 0, 0
    return runs if shift == 0 else None


def _coordinates_in_range(polygons: list, width: int, height: int) -> bool:
    """Finite and within one image size of the image. pycocotools rasterises a polygon by walking its
    edges pixel by pixel: one vertex at 1e300 (or NaN) would take all the memory there is."""
    for polygon in polygons:
        points = np.asarray(polygon, dtype=float).reshape(-1, 2)
        offsets = np.abs(points - [width / 2, height / 2])  # NaN compares False: out of range
        if not (offsets <= [1.5 * width, 1.5 * height]).all():
            return False
    return True


def _segmentation_extent(segmentation, height: int, width: int) -> tuple[float, float, float]:
    """(area, width, height) of a segmentation without rasterising it: cheap enough for the start-up scan."""
    if isinstance(segmentation, list):
        area, xs, ys = 0.0, [], []
        for polygon in segmentation:
            x, y = np.asarray(polygon[0::2], dtype=float), np.asarray(polygon[1::2], dtype=float)
            area += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
            xs.append(x)
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        return area, x.max() - x.min(), y.max() - y.min()
    rle = to_rle(segmentation, height, width)
    _, _, box_width, box_height = mask_utils.toBbox(rle)
    return float(mask_utils.area(rle)), float(box_width), float(box_height)


def to_rle(segmentation, height: int, width: int):
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def instance_mask(segmentation, size: tuple[int, int], file_size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) mask in the file's frame of a segmentation kept by check_annotation (json frame `size`)."""
    mask = mask_utils.decode(to_rle(segmentation, size[1], size[0]))
    if size != file_size:
        mask = cv2.resize(mask, file_size, interpolation=cv2.INTER_NEAREST)
    return mask
