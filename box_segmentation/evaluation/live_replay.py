"""Live replay: a bag's frames published to a running segment_node, its replies evaluated.

Every published frame ends up either received (a BoxMasks with its header stamp came back) or
dropped (none came back before the timeout): received + dropped == published, always.
"""

import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from box_segmentation.evaluation.bag_io import COMPRESSED_TYPE, BagError, Undecodable, make_typestore, read_messages
from box_segmentation.evaluation.scoring import Scorer, latency_summary
from box_segmentation.messages import instances_from_msg, stamp_ns
from box_segmentation.msg import BoxMasks
from box_segmentation.node.fastdds import use_profile

# After the last frame, replies still on their way come within about two inference times: wait
# until none has come for the longer of this and three of the slowest replies so far (bounded by
# the caller's timeout).
QUIET_AFTER_LAST_REPLY = 2.0  # seconds


def replay_live(bag, image_topic: str, output_topic: str, annotations: dict | None = None, rate: float = 1.0,
                timeout: float = 10.0) -> dict:
    typestore = make_typestore()
    messages = list(read_messages(bag, image_topic, typestore))
    recorded = [(stamp, message) for stamp, message in messages if not isinstance(message, Undecodable)]
    if not recorded:
        raise BagError(f"no message on {image_topic} of {bag} deserializes")
    msgtype = recorded[0][1].__msgtype__
    use_profile()  # camera-sized frames, best effort included, pass as they do to a node started by the launch file
    rclpy.init()
    try:
        node = rclpy.create_node("bag_replay")
        replies, sent, node_diagnostics = {}, {}, {}

        def on_reply(msg: BoxMasks):
            replies[stamp_ns(msg.header)] = (time.monotonic(), msg)

        def on_diagnostics(msg: DiagnosticArray):
            for status in msg.status:
                if status.name.endswith(": segmentation"):
                    node_diagnostics.update({kv.key: kv.value for kv in status.values})

        publisher = node.create_publisher(CompressedImage if msgtype == COMPRESSED_TYPE else Image, image_topic,
                                          QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(BoxMasks, output_topic, on_reply,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        _wait_for_node(node, publisher, output_topic, timeout)

        started = time.monotonic()
        first_timestamp = recorded[0][0]
        for timestamp, message in recorded:
            due = started + (timestamp - first_timestamp) / 1e9 / rate
            while time.monotonic() < due:
                rclpy.spin_once(node, timeout_sec=max(0.0, due - time.monotonic()))
            # The bag's own bytes: the frame goes out exactly as recorded, stamp included.
            publisher.publish(bytes(typestore.serialize_cdr(message, msgtype)))
            sent[stamp_ns(message.header)] = time.monotonic()
        _wait_for_replies(node, replies, sent, timeout)
        elapsed = time.monotonic() - started
        node.destroy_node()
    finally:
        rclpy.shutdown()

    received = {stamp: reply for stamp, reply in replies.items() if stamp in sent}
    latencies = [received_at - sent[stamp] for stamp, (received_at, _) in received.items()]
    if not latencies:
        raise BagError(f"segment_node published nothing on {output_topic} for {len(sent)} frames")
    scorer = Scorer(annotations)
    for stamp, (_, msg) in received.items():
        scorer.add(stamp, instances_from_msg(msg), msg.height, msg.width)
    return {"mode": "live", "frames": len(sent), "undecodable_frames": len(messages) - len(recorded),
            "undecodable_examples": [m.error for _, m in messages if isinstance(m, Undecodable)][:3],
            "received": len(received), "dropped": len(sent) - len(received),
            "node_diagnostics": node_diagnostics, "device": node_diagnostics.get("device", "-"),
            "latency": latency_summary(latencies), "throughput_fps": len(received) / elapsed,
            "boxes_per_frame": float(np.mean([len(msg.boxes) for _, msg in received.values()])),
            "accuracy": scorer.metrics()}


def _wait_for_node(node, publisher, output_topic: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while publisher.get_subscription_count() == 0 or node.count_publishers(output_topic) == 0:
        if time.monotonic() > deadline:
            raise BagError(f"no segment_node found: nothing subscribes to {publisher.topic_name} "
                           f"and publishes {output_topic} after {timeout:.0f} s")
        rclpy.spin_once(node, timeout_sec=0.1)


def _wait_for_replies(node, replies: dict, sent: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_count, last_change = len(replies), time.monotonic()
    while len(replies) < len(sent) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
        if len(replies) != last_count:
            last_count, last_change = len(replies), time.monotonic()
        elif time.monotonic() - last_change > _quiet_period(replies, sent):
            break


def _quiet_period(replies: dict, sent: dict) -> float:
    slowest = max((received_at - sent[stamp] for stamp, (received_at, _) in replies.items() if stamp in sent),
                  default=0.0)
    return max(QUIET_AFTER_LAST_REPLY, 3 * slowest)
