"""The /box_masks contract across processes: BoxMasks built by the message helpers (to_box_masks, add_poses) in
one process come out of cropped_masks, full_frame_masks and instances_from_msg in another as they went in."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from box_masks_samples import HEIGHT, WIDTH, sample_box_masks, sample_detections
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message

from box_segmentation.messages import cropped_masks, full_frame_masks, instances_from_msg
from box_segmentation.msg import BoxMask, BoxMasks
from box_segmentation.pick_pose import PoseStatus

HERE = Path(__file__).parent


def receive_from_process(seed: int, count: int) -> BoxMasks:
    """sample_box_masks(seed, count) as published by publish_box_masks.py in its own process."""
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("box_masks_round_trip", context=context)
        received = []
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(BoxMasks, "/test/box_masks", received.append, qos)
        publisher = subprocess.Popen([sys.executable, str(HERE / "publish_box_masks.py"), "/test/box_masks",
                                      str(seed), str(count)], cwd=HERE)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert publisher.wait(timeout=30) == 0
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    assert received, "no BoxMasks arrived from the publisher process"
    return received[0]


def test_box_masks_from_another_process_read_back_as_they_were_built():
    seed, count = 7, 30  # 30 cartons at 720p: more than Fast DDS's default 512 KB shared-memory segment
    got = receive_from_process(seed, count)
    header, instances, poses, order = sample_detections(seed, count)
    # Field by field (the expected message through serialization too, so its float32 fields are float32):
    # serialized bytes would also compare CDR's alignment padding, which the serializer leaves as it finds it in
    # memory (one run differed in the 3 bytes after the frame_id's end).
    assert got == deserialize_message(serialize_message(sample_box_masks(seed, count)), BoxMasks)
    assert len(serialize_message(got)) > 512 * 1024

    assert got.header == header and (got.height, got.width) == (HEIGHT, WIDTH)
    for mask, instance in zip(cropped_masks(got), instances, strict=True):
        np.testing.assert_array_equal(mask, instance.mask)
    frames = full_frame_masks(got)
    for frame, instance in zip(frames, instances, strict=True):
        x, y, w, h = instance.roi
        assert frame.sum() == instance.area == frame[y:y + h, x:x + w].sum()
    for back, instance in zip(instances_from_msg(got), instances, strict=True):
        assert (back.roi, back.area, back.class_id, back.class_name) == (instance.roi, instance.area, 1, "carton")
        assert back.score == pytest.approx(instance.score, rel=1e-6)  # float32 on the wire
        assert back.centroid == pytest.approx(instance.centroid, rel=1e-6)
        assert back.rotated_rect == pytest.approx(instance.rotated_rect, rel=1e-6)

    for rank, index in enumerate(order):
        box, pose = got.boxes[index], poses[index]
        assert (box.pose_status, box.pick_rank) == (pose.status, rank)
        if pose.status == PoseStatus.OK:
            position = box.pose.position
            assert [position.x, position.y, position.z] == pytest.approx(pose.position.tolist())
            q = box.pose.orientation
            assert [q.x, q.y, q.z, q.w] == pytest.approx(list(pose.quaternion))
            assert (box.top_length, box.top_width) == pytest.approx((0.4, 0.3))
        else:
            assert box.pose_status == BoxMask.POSE_SPARSE_DEPTH and box.top_length == 0.0
