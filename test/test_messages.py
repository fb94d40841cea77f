"""The /box_masks contract: generated messages cross real DDS between processes unchanged."""

import subprocess
import sys
import time
from pathlib import Path

import rclpy
from box_masks_samples import sample_box_masks
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message

from box_segmentation.msg import BoxMasks

HERE = Path(__file__).parent


def test_box_masks_cross_processes_bit_for_bit():
    seed = 7
    rclpy.init()
    try:
        node = rclpy.create_node("box_masks_round_trip")
        received = []
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(BoxMasks, "/test/box_masks", received.append, qos)
        publisher = subprocess.Popen([sys.executable, str(HERE / "publish_box_masks.py"), "/test/box_masks",
                                      str(seed)], cwd=HERE)
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        assert publisher.wait(timeout=30) == 0
        node.destroy_node()
    finally:
        rclpy.shutdown()

    assert received, "no BoxMasks arrived from the publisher process"
    expected = sample_box_masks(seed)
    got = received[0]
    assert len(got.boxes) == len(expected.boxes) == 5
    assert got.header == expected.header
    for got_box, expected_box in zip(got.boxes, expected.boxes, strict=True):
        assert got_box.roi == expected_box.roi
        assert bytes(got_box.mask) == bytes(expected_box.mask)
        assert len(got_box.mask) == got_box.roi.width * got_box.roi.height
    assert serialize_message(got) == serialize_message(expected)
