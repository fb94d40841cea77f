"""masks: cropped mask resizing against torchvision's pasting, and the shape measures."""

import math

import cv2
import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks, paste_masks_in_image
from torchvision.ops import boxes as box_ops

from box_segmentation import masks
from box_segmentation.masks import BoxCrop, describe, shapes_in_boxes


def rotated_rect(mask: np.ndarray, x_offset: int = 0, y_offset: int = 0) -> tuple[float, float, float, float, float]:
    return describe(BoxCrop(x_offset, y_offset, mask)).rotated_rect


def full_frame(shape, height: int, width: int) -> np.ndarray:
    """A MaskShape's mask placed in an empty frame at its roi (all zeros for None)."""
    full = np.zeros((height, width), np.uint8)
    if shape is not None:
        x, y, w, h = shape.roi
        full[y:y + h, x:x + w] = shape.mask
    return full


def opencv_rotated_rect(mask: np.ndarray) -> tuple[float, float, float, float, float]:
    """The reference: cv2.minAreaRect of every outer contour point, in msg/RotatedRect.msg's convention."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    (center_x, center_y), (side_w, side_h), degrees = cv2.minAreaRect(np.concatenate(contours).reshape(-1, 2))
    radians = math.radians(degrees)
    length, width, angle = (side_h, side_w, radians - math.pi / 2) if side_h >= side_w else (side_w, side_h, radians)
    return center_x + 0.5, center_y + 0.5, length + 1.0, width + 1.0, (angle + math.pi / 2) % math.pi - math.pi / 2


def same_rect(measured, expected) -> bool:
    """Equal rectangles; angles equal modulo pi (the long side has no head), or pi/2 for a square."""
    period = math.pi / 2 if abs(expected[2] - expected[3]) < 1e-3 else math.pi
    turn = (measured[4] - expected[4]) % period
    return measured[:4] == pytest.approx(expected[:4], abs=1e-3) and min(turn, period - turn) < 1e-4


def random_blobs(generator: np.random.Generator, shape=(40, 50)) -> np.ndarray:
    """Masks with holes, several parts, single pixels and rows full from edge to edge."""
    coarse = generator.random((shape[0] // 5 + 1, shape[1] // 5 + 1)).astype(np.float32)
    smooth = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return (smooth > generator.uniform(0.2, 0.8)).astype(np.uint8)


def rasterised_rectangle(center, length, width, angle, shape=(120, 160)) -> np.ndarray:
    """Pixels whose centre (u + 0.5, v + 0.5) lies inside the rotated rectangle."""
    v, u = np.mgrid[0:shape[0], 0:shape[1]]
    dx, dy = u + 0.5 - center[0], v + 0.5 - center[1]
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    return ((np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)).astype(np.uint8)


@pytest.mark.parametrize("angle_deg", [-89, -60, -30, 0, 17, 45, 75])
def test_rotated_rect_of_a_drawn_rectangle(angle_deg):
    angle = math.radians(angle_deg)
    mask = rasterised_rectangle((80.3, 60.7), 70, 30, angle)
    cx, cy, length, width, measured = rotated_rect(mask)
    assert cx == pytest.approx(80.3, abs=0.5) and cy == pytest.approx(60.7, abs=0.5)
    # Pixel squares overshoot a rotated edge: within a pixel, never smaller.
    assert 70 - 0.2 <= length <= 70 + 1.1 and 30 - 0.2 <= width <= 30 + 1.1
    assert -math.pi / 2 <= measured < math.pi / 2
    difference = (measured - angle + math.pi / 2) % math.pi - math.pi / 2  # the long side has no head
    assert abs(math.degrees(difference)) <= 1.0


def test_rotated_rect_angle_range_and_offsets():
    vertical = np.zeros((10, 10), np.uint8)
    vertical[2:9, 3:5] = 1  # 2 wide, 7 tall: its long side points along y
    assert rotated_rect(vertical, 100, 200) == pytest.approx((104.0, 205.5, 7.0, 2.0, -math.pi / 2))
    single = np.zeros((3, 3), np.uint8)
    single[1, 1] = 1
    assert rotated_rect(single) == pytest.approx((1.5, 1.5, 1.0, 1.0, 0.0))


def test_centroid_area_and_tight_roi():
    mask = np.zeros((20, 30), np.uint8)
    mask[4:7, 10:16] = 1  # 6 x 3 block: pixel centres average to (13, 5.5)
    mask[12, 20] = 1
    assert describe(BoxCrop(0, 0, mask)).roi == (10, 4, 11, 9)
    shape = describe(BoxCrop(100, 50, mask))
    assert shape.area == 19
    cx, cy = shape.centroid
    assert cx == pytest.approx(100 + (18 * 13.0 + 20.5) / 19)
    assert cy == pytest.approx(50 + (18 * 5.5 + 12.5) / 19)


def test_describe_tightens_and_offsets():
    mask = np.zeros((20, 30), np.uint8)
    mask[4:7, 10:16] = 1
    shape = describe(BoxCrop(x_offset=100, y_offset=50, mask=mask))
    assert shape.roi == (110, 54, 6, 3)
    assert shape.mask.shape == (3, 6) and shape.mask.flags.c_contiguous and shape.mask.all()
    assert shape.area == 18
    assert shape.centroid == pytest.approx((113.0, 55.5))
    assert shape.rotated_rect == pytest.approx((113.0, 55.5, 6.0, 3.0, 0.0))
    assert describe(BoxCrop(0, 0, np.zeros((5, 5), np.uint8))) is None


def test_masks_in_boxes_match_torchvision_pasting():
    generator = torch.Generator().manual_seed(0)
    height, width = 90, 130
    probs = torch.rand(6, 28, 28, generator=generator)
    boxes = torch.tensor([[10.2, 5.7, 60.9, 40.1], [0.0, 0.0, 129.9, 89.9], [100.5, 70.2, 130.0, 90.0],
                          [50.0, 50.0, 51.0, 51.0], [-3.0, 20.0, 20.0, 95.0], [70.0, 10.0, 128.0, 25.0]])
    shapes = shapes_in_boxes(probs, boxes, (height, width), threshold=0.5)
    pasted = paste_masks_in_image(probs[:, None], boxes, (height, width))[:, 0] > 0.5
    for shape, expected in zip(shapes, pasted, strict=True):
        assert shape.mask.dtype == np.uint8
        np.testing.assert_array_equal(full_frame(shape, height, width), expected.numpy())
    assert shapes_in_boxes(probs[:0], boxes[:0], (height, width), 0.5) == []


def torch_resized(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch's bilinear resize of one 2-D array, the kernel paste_masks_in_image calls."""
    source = torch.from_numpy(probs)[None, None]
    return torch.nn.functional.interpolate(source, size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def sources_and_sizes(count: int, seed: int, largest: int = 1600):
    """Padded 30x30 mask probabilities (random, and a 0/1 checkerboard: neighbours as far apart as they come) with
    output sizes from one pixel up to largest (by default wider than a 1280x720 frame)."""
    rng = np.random.default_rng(seed)
    checkerboard = (np.indices((30, 30)).sum(axis=0) % 2).astype(np.float32)
    for index in range(count):
        source = checkerboard if index % 2 else rng.random((30, 30), dtype=np.float32)
        yield source, *(int(size) for size in rng.integers(1, largest, size=2))


def test_opencv_and_torch_resizes_stay_within_the_band_the_cpu_path_relies_on():
    # Pixels OpenCV puts further than _OPENCV_DISAGREEMENT from the threshold are taken as OpenCV resized them.
    worst = max(float(np.abs(cv2.resize(source, (width, height), interpolation=cv2.INTER_LINEAR)
                             - torch_resized(source, height, width).numpy()).max())
                for source, height, width in sources_and_sizes(60, seed=0))
    assert 0 < worst < masks._OPENCV_DISAGREEMENT / 2


def test_torch_weights_reproduce_torch_values_within_the_rounding_margin():
    # Pixels near the threshold are settled from _torch_bilinear_weights with the rounding of the source coordinate
    # this torch build uses, as probed: its values must be torch's up to the float32 roundings of its sums.
    # Outputs with height + width <= 128 go through torch's channels-last kernel, which sums four weighted corners
    # (its other kernel interpolates rows, then between them): sizes up to 64 cover it.
    assert len(masks._torch_roundings()) == 1  # the probe tells the two roundings apart
    sizes = [*sources_and_sizes(20, seed=1, largest=400), *sources_and_sizes(20, seed=2, largest=64)]
    for source, height, width in sizes:
        expected = torch_resized(source, height, width).numpy().astype(np.float64)
        y, x = (values.ravel() for values in np.indices((height, width)))
        (y0, y1, wy0, wy1), = masks._torch_bilinear_weights(y, np.full(y.size, height), 30)
        (x0, x1, wx0, wx1), = masks._torch_bilinear_weights(x, np.full(x.size, width), 30)
        top, bottom = source[y0, x0] * wx0 + source[y0, x1] * wx1, source[y1, x0] * wx0 + source[y1, x1] * wx1
        values = top * wy0 + bottom * wy1
        assert np.abs(values - expected.ravel()).max() <= 5 * 2.0**-24 < masks._TORCH_ROUNDING, (height, width)


@pytest.mark.parametrize("roundings", [None, ("fused", "unfused")])
@pytest.mark.parametrize("spread", [0.0, 1e-7, 3e-6, 3e-5])
def test_pixels_at_the_threshold_are_torchvisions(spread, roundings, monkeypatch):
    """Probabilities at and just around the threshold: every pixel is near it, OpenCV's values are not trusted
    there, and each is settled from torch's weights or its box resized again by torch's kernel; also where the
    probe cannot tell torch's rounding (both are tried)."""
    if roundings:
        monkeypatch.setattr(masks, "_torch_roundings", lambda: roundings)
    generator = torch.Generator().manual_seed(4)
    height, width = 200, 300
    probs = 0.5 + spread * (2 * torch.rand(12, 28, 28, generator=generator) - 1)
    corners = torch.rand(12, 2, generator=generator) * torch.tensor([width - 20.0, height - 20.0])
    boxes = torch.cat([corners, corners + torch.rand(12, 2, generator=generator) * 150 + 2], dim=1)
    shapes = shapes_in_boxes(probs, boxes, (height, width), threshold=0.5)
    pasted = (paste_masks_in_image(probs[:, None], boxes, (height, width))[:, 0] > 0.5).numpy()
    for shape, expected in zip(shapes, pasted, strict=True):
        np.testing.assert_array_equal(full_frame(shape, height, width), expected)


def test_layout_is_torchvisions_box_expansion():
    # _expanded_boxes does in numpy what expand_boxes does in torch, float32 op for op: the same integer boxes.
    rng = np.random.default_rng(6)
    corners = rng.uniform(-50, 2000, size=(100_000, 2)).astype(np.float32)
    sizes = rng.uniform(0, 600, size=(100_000, 2)).astype(np.float32) * (rng.random((100_000, 1)) < 0.9)
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    for mask_size in (28, 14):
        expected = expand_boxes(torch.from_numpy(boxes), expand_masks(torch.zeros(1, 1, mask_size, mask_size), 1)[1])
        np.testing.assert_array_equal(masks._expanded_boxes(boxes, mask_size), expected.to(torch.int64).numpy())


def test_masks_in_boxes_leaves_the_process_wide_thread_count_alone(monkeypatch):
    # torch's thread count is process-wide: changing it per frame races with any other thread using torch.
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    probs = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[0.0, 0.0, 200.0, 150.0], [20.0, 30.0, 90.0, 80.0], [5.0, 5.0, 6.0, 6.0]])
    assert len(shapes_in_boxes(probs, boxes, (160, 220), threshold=0.5)) == 3
    assert calls == []


def test_many_boxes_keep_torchvision_pixels_and_shapes():
    """Smooth probabilities (many pixels near the threshold), boxes of every size, some at the border
    (the model clips its boxes to the image; the mask's padding and box expansion then cross it)."""
    generator = torch.Generator().manual_seed(1)
    height, width = 240, 320
    coarse = torch.rand(24, 1, 7, 7, generator=generator)
    probs = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bicubic", align_corners=False)[:, 0]
    corners = torch.rand(24, 2, generator=generator) * torch.tensor([width - 1.0, height - 1.0])
    sizes = torch.rand(24, 2, generator=generator) * 200 + 1
    boxes = box_ops.clip_boxes_to_image(torch.cat([corners, corners + sizes], dim=1), (height, width))
    shapes = shapes_in_boxes(probs, boxes, (height, width), threshold=0.5)
    pasted = (paste_masks_in_image(probs[:, None], boxes, (height, width))[:, 0] > 0.5).numpy().astype(np.uint8)
    for shape, expected in zip(shapes, pasted, strict=True):
        np.testing.assert_array_equal(full_frame(shape, height, width), expected)
        if not expected.any():
            assert shape is None
            continue
        # The shape of the cropped mask is the shape of the full-frame mask.
        rows, columns = np.nonzero(expected)
        assert shape.roi == cv2.boundingRect(expected) and shape.area == rows.size
        assert shape.centroid == pytest.approx((columns.mean() + 0.5, rows.mean() + 0.5))
        assert same_rect(shape.rotated_rect, opencv_rotated_rect(expected))


def test_shapes_match_independent_measures_of_random_masks():
    generator = np.random.default_rng(5)
    for _ in range(60):
        mask = random_blobs(generator)
        shape = describe(BoxCrop(7, 3, mask))
        if not mask.any():
            assert shape is None
            continue
        rows, columns = np.nonzero(mask)
        x, y = columns.min(), rows.min()
        assert shape.roi == (7 + x, 3 + y, columns.max() + 1 - x, rows.max() + 1 - y)
        np.testing.assert_array_equal(shape.mask, mask[y:rows.max() + 1, x:columns.max() + 1])
        assert shape.area == rows.size
        assert shape.centroid == pytest.approx((7 + columns.mean() + 0.5, 3 + rows.mean() + 0.5))
        expected = opencv_rotated_rect(mask)
        assert same_rect(shape.rotated_rect, (expected[0] + 7, expected[1] + 3, *expected[2:])), \
            (shape.rotated_rect, expected)


def test_full_rows_and_single_pixels():
    full = np.ones((4, 6), np.uint8)  # every row's run meets the next row's
    shape = describe(BoxCrop(10, 20, full))
    assert shape.roi == (10, 20, 6, 4) and shape.area == 24 and shape.centroid == pytest.approx((13.0, 22.0))
    assert shape.rotated_rect == pytest.approx((13.0, 22.0, 6.0, 4.0, 0.0))
    corners = np.zeros((5, 5), np.uint8)
    corners[0, 4] = corners[4, 0] = 1  # the last pixel of a row, the first of a later row
    shape = describe(BoxCrop(0, 0, corners))
    assert shape.roi == (0, 0, 5, 5) and shape.area == 2 and shape.centroid == pytest.approx((2.5, 2.5))


def test_runs_across_rows_and_masks_are_split_at_every_row_start():
    """Boxes smaller than the mask head's 28x28 with masks full to their edges: their runs go on from row to row,
    from the third mask into the fourth and to the buffer's end, and are measured row by row all the same."""
    height, width = 60, 80
    probs = torch.ones(4, 28, 28)
    probs[1] = torch.nn.functional.interpolate(torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(2)),
                                               size=(28, 28), mode="bilinear", align_corners=False)[0, 0]
    boxes = torch.tensor([[20.0, 5.0, 28.0, 12.0], [10.0, 10.0, 50.0, 40.0], [50.0, 20.0, 58.0, 31.0],
                          [1.0, 40.0, 9.0, 47.0]])
    flat, layout = masks._box_masks(probs, boxes, 0.5)
    for start, _, _, box_h, box_w in layout[[0, 2, 3]].tolist():
        assert flat[start:start + box_h * box_w].all()  # full boxes: the case under test
    shapes = shapes_in_boxes(probs, boxes, (height, width), threshold=0.5)
    pasted = (paste_masks_in_image(probs[:, None], boxes, (height, width))[:, 0] > 0.5).numpy().astype(np.uint8)
    for shape, expected in zip(shapes, pasted, strict=True):
        reference = describe(BoxCrop(0, 0, expected))
        assert (shape.roi, shape.area) == (reference.roi, reference.area)
        assert shape.centroid == pytest.approx(reference.centroid)
        assert shape.rotated_rect == pytest.approx(reference.rotated_rect)
        np.testing.assert_array_equal(full_frame(shape, height, width), expected)


def test_changes_found_word_by_word_are_every_change():
    # _changes pads to whole 8-byte words and reads hits back from the words' bytes, a chunk at a time: every length
    # modulo 8, chunks that split words and ones that don't, hits at the first and last position, none, and every
    # position.
    rng = np.random.default_rng(7)
    for size in [*range(1, 34), 1000]:
        for density in (0.0, 0.03, 0.5, 1.0):
            ones = rng.random(size) < density
            ones[-1] ^= size % 3 == 0
            for chunk in (8, 13, 1 << 18):
                np.testing.assert_array_equal(masks._changes(ones, chunk), np.flatnonzero(ones[1:] != ones[:-1]) + 1)
    alternating = np.arange(17) % 2 == 1
    np.testing.assert_array_equal(masks._changes(alternating), np.arange(1, 17))


def test_shapes_in_boxes_are_the_shapes_of_the_pasted_masks():
    """All boxes measured at once give what describe gives of torchvision's full-frame masks one by one: boxes
    across the image border, boxes smaller than the mask (their masks reach the box edge), empty masks."""
    generator = torch.Generator().manual_seed(3)
    height, width = 120, 160
    coarse = torch.rand(30, 1, 6, 6, generator=generator)
    probs = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bicubic", align_corners=False)[:, 0]
    probs[0] = 0.0  # nothing above the threshold
    corners = torch.rand(30, 2, generator=generator) * torch.tensor([width + 40.0, height + 40.0]) - 20
    sizes = torch.rand(30, 2, generator=generator) * 90 + 2
    sizes[:6] = torch.rand(6, 2, generator=generator) * 20 + 1
    boxes = torch.cat([corners, corners + sizes], dim=1)
    probs[1] = 1.0
    boxes[1] = torch.tensor([-50.0, -40.0, -8.0, -6.0])  # wholly outside the image
    shapes = shapes_in_boxes(probs, boxes, (height, width), threshold=0.5)
    assert shapes[0] is None and shapes[1] is None and sum(shape is None for shape in shapes) < 10
    for index, shape in enumerate(shapes):
        inside = boxes[index, :2].lt(torch.tensor([width, height])).all() and boxes[index, 2:].gt(0).all()
        if not inside:  # torchvision's paste fails on a box wholly outside the image; nothing of it is seen
            assert shape is None
            continue
        pasted = paste_masks_in_image(probs[index:index + 1, None], boxes[index:index + 1], (height, width))
        expected = describe(BoxCrop(0, 0, (pasted[0, 0] > 0.5).numpy().astype(np.uint8)))
        if expected is None:
            assert shape is None
            continue
        assert (shape.roi, shape.area) == (expected.roi, expected.area)
        np.testing.assert_array_equal(shape.mask, expected.mask)
        assert shape.centroid == pytest.approx(expected.centroid)
        assert shape.rotated_rect == pytest.approx(expected.rotated_rect)
    assert shapes_in_boxes(probs[:0], boxes[:0], (height, width), 0.5) == []
