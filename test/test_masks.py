"""masks: cropped mask resizing against torchvision's pasting, and the shape measures."""

import math

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import boxes as box_ops

from box_segmentation.masks import BoxCrop, centroid, describe, masks_in_boxes, rotated_rect, tight_roi


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
    assert tight_roi(mask) == (10, 4, 11, 9)
    cx, cy = centroid(mask, x_offset=100, y_offset=50)
    assert cx == pytest.approx(100 + (18 * 13.0 + 20.5) / 19)
    assert cy == pytest.approx(50 + (18 * 5.5 + 12.5) / 19)
    assert tight_roi(np.zeros((4, 4), np.uint8)) == (0, 0, 0, 0)


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
    crops = masks_in_boxes(probs, boxes, (height, width), threshold=0.5)
    pasted = paste_masks_in_image(probs[:, None], boxes, (height, width))[:, 0] > 0.5
    for crop, expected in zip(crops, pasted, strict=True):
        assert crop.mask.dtype == np.uint8
        full = np.zeros((height, width), np.uint8)
        h, w = crop.mask.shape
        full[crop.y_offset:crop.y_offset + h, crop.x_offset:crop.x_offset + w] = crop.mask
        np.testing.assert_array_equal(full, expected.numpy())
    assert masks_in_boxes(probs[:0], boxes[:0], (height, width), 0.5) == []


def test_masks_in_boxes_leaves_the_process_wide_thread_count_alone(monkeypatch):
    # torch's thread count is process-wide: changing it per frame races with any other thread using torch.
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    probs = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[0.0, 0.0, 200.0, 150.0], [20.0, 30.0, 90.0, 80.0], [5.0, 5.0, 6.0, 6.0]])
    assert len(masks_in_boxes(probs, boxes, (160, 220), threshold=0.5)) == 3
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
    crops = masks_in_boxes(probs, boxes, (height, width), threshold=0.5)
    pasted = (paste_masks_in_image(probs[:, None], boxes, (height, width))[:, 0] > 0.5).numpy().astype(np.uint8)
    for crop, expected in zip(crops, pasted, strict=True):
        full = np.zeros((height, width), np.uint8)
        h, w = crop.mask.shape
        full[crop.y_offset:crop.y_offset + h, crop.x_offset:crop.x_offset + w] = crop.mask
        np.testing.assert_array_equal(full, expected)
        shape = describe(crop)
        if not expected.any():
            assert shape is None
            continue
        # The shape of the crop is the shape of the full-frame mask.
        assert shape.roi == tight_roi(expected) and shape.area == int(expected.sum())
        assert shape.centroid == pytest.approx(centroid(expected))
        assert shape.rotated_rect == pytest.approx(rotated_rect(expected))
