#!/usr/bin/env python3
"""segment_node frame-to-publish latency and throughput, over real DDS on this machine.

The node runs in its own process, started with config/segment.yaml as a user would. Two runs:

  latency:    closed loop, one frame at a time (the next is sent when the previous result is
              back): receive time - image stamp, with no queueing in the way;
  throughput: frames at --rate Hz for --seconds: results per second, frames dropped (the node
              keeps only the newest), and the age of each result (receive time - stamp).

Frames travel reliable by default (camera and node input_reliability). Both processes load
config/fastdds_large_frames.xml, as the launch file has the node do: without it, best effort loses
most frames of about 1 MB (640x480 rgb8) between processes. --reliability best_effort shows that case.

Without --checkpoint, a random-weights checkpoint of the small model (maskrcnn_resnet18_fpn at
min_size 128, at most 5 detections) is written to a temporary folder: right for the node's
overhead and the small model's speed, not for accuracy.

Run: python benchmarks/bench_node_latency.py [--checkpoint model.pt] [--frames 50] [--rate 30]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

# DDS stays on this machine, in its own domain; set before rclpy is imported.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from synthetic import render_scene  # noqa: E402

from box_segmentation.image_conversion import rgb_to_imgmsg_fields  # noqa: E402
from box_segmentation.msg import BoxMasks  # noqa: E402
from box_segmentation.node.fastdds import use_profile  # noqa: E402

SHIPPED_MODEL = REPO / "models" / "carton_r18_synthetic.pt"
IMAGE_TOPIC = "/camera/color/image_raw"


def start_node(checkpoint: Path, device: str, reliability: str, threads: int | None = None,
               **popen) -> subprocess.Popen:
    """segment_node in its own process, with config/segment.yaml and these settings, reading IMAGE_TOPIC."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    return subprocess.Popen(
        [sys.executable, "-m", "box_segmentation.node", "--ros-args", "--params-file",
         str(REPO / "config" / "segment.yaml"), "-p", f"checkpoint:={checkpoint}", "-p", f"device:={device}",
         "-p", f"input_reliability:={reliability}", "-r", f"image:={IMAGE_TOPIC}"],
        env=env, cwd=REPO, **popen)


class Client:
    """Publishes images and records (receive time, image stamp) of every BoxMasks."""

    def __init__(self, rgb: np.ndarray, reliability: str):
        self.node = rclpy.create_node("bench_node_latency")
        self.fields = rgb_to_imgmsg_fields(rgb)
        policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        self.publisher = self.node.create_publisher(Image, IMAGE_TOPIC, QoSProfile(depth=1, reliability=policy))
        self.results = []
        self.node.create_subscription(BoxMasks, "/box_masks", self._on_result,
                                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def _on_result(self, msg):
        self.results.append((time.time(), msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    def send(self) -> float:
        msg = Image(**self.fields)
        msg.header.frame_id = "bench"
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(msg)
        return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            rclpy.spin_once(self.node, timeout_sec=min(left, 0.01))

    def round_trip(self, timeout: float = 10.0) -> float | None:
        """Latency of one frame, or None if its result did not come back (lost or dropped)."""
        stamp = self.send()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.01)
            for received, result_stamp in self.results[-3:]:
                if result_stamp == stamp:
                    return received - stamp
        return None


def percentiles(seconds: list[float]) -> str:
    p50, p95 = np.percentile(seconds, [50, 95]) * 1000
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   max {max(seconds) * 1000:7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_MODEL, help="the model the node runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=50, help="closed-loop frames for the latency run")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate of the throughput run (Hz)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the throughput run")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--reliability", choices=["reliable", "best_effort"], default="reliable")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the node (default: torch's choice)")
    args = parser.parse_args()

    use_profile()  # for this process and the node
    node = start_node(args.checkpoint, args.device, args.reliability, args.threads)
    rclpy.init()
    try:
        client = Client(render_scene(0, args.width, args.height, kind="pallet").image, args.reliability)
        while client.round_trip(timeout=2.0) is None:  # model loading, discovery
            if node.poll() is not None:
                print("segment_node exited", file=sys.stderr)
                return 1
        for _ in range(3):  # warm-up
            client.round_trip()

        latencies = [client.round_trip() for _ in range(args.frames)]
        lost = latencies.count(None)
        latencies = [latency for latency in latencies if latency is not None]
        if not latencies:
            print(f"all {lost} frames lost", file=sys.stderr)
            return 1

        client.results.clear()
        sent = []
        start, start_wall = time.monotonic(), time.time()
        while time.monotonic() - start < args.seconds:
            sent.append(client.send())
            client.spin_for(1.0 / args.rate - (time.monotonic() - start) % (1.0 / args.rate))
        client.spin_for(3.0)  # the last frames' results
        ours = [(received, stamp) for received, stamp in client.results if stamp >= sent[0]]
        ages = [received - stamp for received, stamp in ours]
        throughput = len(ours) / (ours[-1][0] - start_wall)
    finally:
        node.terminate()
        node.wait(timeout=30)
        rclpy.try_shutdown()

    print(f"\nsegment_node on {args.device}, {args.width}x{args.height} rgb8 images ({args.reliability}), "
          f"checkpoint {args.checkpoint}")
    print(f"latency    ({len(latencies)} frames, one at a time{f', {lost} lost' if lost else ''}): "
          f"{percentiles(latencies)}   -> {1 / np.mean(latencies):.1f} frames/s")
    print(f"throughput ({len(sent)} frames at {args.rate:g} Hz): {throughput:.1f} results/s, "
          f"{len(sent) - len(ages)} frames dropped ({100 * (1 - len(ages) / len(sent)):.0f}%)")
    print(f"result age under load: {percentiles(ages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
