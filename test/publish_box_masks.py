"""Publishes sample_box_masks(seed, count), built here by the message helpers, once a subscriber is there; run as
its own process."""

import sys
import time

import rclpy
from box_masks_samples import sample_box_masks
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from box_segmentation.msg import BoxMasks


def main(topic: str, seed: int, count: int, timeout: float = 20.0) -> int:
    rclpy.init()
    node = rclpy.create_node("box_masks_sample_publisher")
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    publisher = node.create_publisher(BoxMasks, topic, qos)
    deadline = time.monotonic() + timeout
    while publisher.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print("no subscriber appeared", file=sys.stderr)
            return 1
        time.sleep(0.05)
    publisher.publish(sample_box_masks(seed, count))
    publisher.wait_for_all_acked(Duration(seconds=10))  # the writer lives until the reliable sample is delivered
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
