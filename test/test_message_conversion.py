"""messages: instances -> BoxMasks -> masks, bit for bit, and through serialization."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message

from box_segmentation.masks import BoxCrop, describe
from box_segmentation.messages import cropped_masks, full_frame_masks, instances_from_msg, to_box_masks
from box_segmentation.msg import BoxMasks
from box_segmentation.types import Instance

HEIGHT, WIDTH = 48, 64


def random_instances(count: int, seed: int = 0) -> list[Instance]:
    rng = np.random.default_rng(seed)
    instances = []
    for index in range(count):
        w, h = rng.integers(1, 30, size=2)
        x, y = rng.integers(0, WIDTH - w), rng.integers(0, HEIGHT - h)
        mask = (rng.random((h, w)) < 0.6).astype(np.uint8)
        mask[0, 0] = 1  # never empty
        shape = describe(BoxCrop(int(x), int(y), mask))
        instances.append(Instance(box=(float(x), float(y), float(x + w), float(y + h)), score=0.9 - 0.1 * index,
                                  class_id=1, class_name="carton", roi=shape.roi, mask=shape.mask, area=shape.area,
                                  centroid=shape.centroid, rotated_rect=shape.rotated_rect))
    return instances


def header():
    return SimpleNamespace(stamp=SimpleNamespace(sec=12, nanosec=345), frame_id="camera_color_optical_frame")


def test_round_trip_is_bit_exact():
    instances = random_instances(5)
    msg = deserialize_message(serialize_message(to_box_masks(instances, header(), HEIGHT, WIDTH)), BoxMasks)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 345,
                                                                                     "camera_color_optical_frame")
    assert (msg.height, msg.width) == (HEIGHT, WIDTH)
    assert [box.id for box in msg.boxes] == list(range(5))
    for mask, instance in zip(cropped_masks(msg), instances, strict=True):
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, instance.mask)
    frames = full_frame_masks(msg)
    assert frames.shape == (5, HEIGHT, WIDTH) and frames.dtype == np.uint8
    for frame, instance in zip(frames, instances, strict=True):
        x, y, w, h = instance.roi
        np.testing.assert_array_equal(frame[y:y + h, x:x + w], instance.mask)
        assert frame.sum() == instance.area


def test_fields_and_instances_from_msg():
    instances = random_instances(3, seed=1)
    msg = to_box_masks(instances, header(), HEIGHT, WIDTH)
    box = msg.boxes[1]
    assert (box.roi.x_offset, box.roi.y_offset, box.roi.width, box.roi.height) == instances[1].roi
    assert box.area == instances[1].area and box.class_name == "carton" and box.class_id == 1
    back = instances_from_msg(msg)
    for restored, original in zip(back, instances, strict=True):
        assert restored.roi == original.roi and restored.area == original.area
        np.testing.assert_array_equal(restored.mask, original.mask)
        assert restored.score == pytest.approx(original.score)
        assert restored.centroid == pytest.approx(original.centroid, abs=1e-4)
        assert restored.rotated_rect == pytest.approx(original.rotated_rect, abs=1e-4)
        assert -math.pi / 2 <= restored.rotated_rect[4] < math.pi / 2


def test_empty_and_inconsistent_messages():
    msg = to_box_masks([], header(), HEIGHT, WIDTH)
    assert cropped_masks(msg) == [] and full_frame_masks(msg).shape == (0, HEIGHT, WIDTH)
    msg = to_box_masks(random_instances(1), header(), HEIGHT, WIDTH)
    msg.boxes[0].roi.width += 1
    with pytest.raises(ValueError, match="mask has"):
        cropped_masks(msg)
    # A roi past the image's edge (numpy would clip the frame's slice and fail to broadcast the mask into it).
    msg = to_box_masks(random_instances(1), header(), HEIGHT, WIDTH)
    msg.width = msg.boxes[0].roi.x_offset + msg.boxes[0].roi.width - 1
    with pytest.raises(ValueError, match=r"box 0: roi \d+x\d+ at \(\d+, \d+\) reaches past the \d+x\d+ image"):
        full_frame_masks(msg)
