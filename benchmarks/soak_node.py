#!/usr/bin/env python3
"""segment_node soak: frames at a camera's rate for a bounded time, the node's resources sampled.

The node runs in its own process with config/segment.yaml, as a user starts it. Images go to it
at --rate Hz (reliable, as in bench_node_latency.py) until --frames are sent or --seconds pass;
every --interval seconds one line reports, read from /proc/<pid> of the node: resident memory
(RSS), threads and open files; the age of its results in the interval (receive time - image
stamp); and its own counts from /diagnostics (received, published, dropped, bad, failed).
--bad-every N makes every Nth frame a bad one (data shorter than step x height), so the bad-frame
path soaks too. A leak shows as RSS, threads or open files growing from line to line.

Without --checkpoint, the shipped small model runs. Linux only (/proc).

Run: python benchmarks/soak_node.py [--checkpoint model.pt] [--seconds 600] [--frames 18000] [--rate 30]
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Its sibling sets DDS up on loopback in its own domain, before rclpy is imported, and finds the training modules.
from bench_node_latency import IMAGE_TOPIC, SHIPPED_MODEL, start_node  # isort: skip

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from synthetic import render_scene

from box_segmentation.image_conversion import rgb_to_imgmsg_fields
from box_segmentation.msg import BoxMasks

COUNTS = {"received": "frames received", "published": "frames published", "dropped": "frames dropped",
          "bad": "bad frames", "failed": "failed frames"}  # column -> the node's diagnostics key


@dataclass
class Sample:
    seconds: float  # since the soak started
    sent: int
    results: int  # BoxMasks received
    rss_mb: float
    threads: int
    open_files: int
    age_p50_ms: float  # of the results received since the previous sample; nan if none
    age_max_ms: float
    counts: dict  # the node's diagnostics counts, by COUNTS column

    def line(self) -> str:
        counts = "  ".join(f"{name} {self.counts.get(name, '?')}" for name in COUNTS)
        return (f"{self.seconds:7.1f} s  sent {self.sent:6d}  results {self.results:6d}  RSS {self.rss_mb:7.1f} MB  "
                f"threads {self.threads:3d}  files {self.open_files:4d}  age p50 {self.age_p50_ms:6.1f} ms  "
                f"max {self.age_max_ms:6.1f} ms  |  {counts}")


def process_resources(pid: int) -> tuple[float, int, int]:
    """RSS in MB, threads and open file descriptors of a running process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    rss_kb = int(status["VmRSS"].split()[0])
    return rss_kb / 1024, int(status["Threads"]), len(os.listdir(f"/proc/{pid}/fd"))


class Client:
    """Publishes images, records the age of each result and the node's latest diagnostics counts."""

    def __init__(self, images: list[np.ndarray], context):
        self.node = rclpy.create_node("soak_node_client", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, IMAGE_TOPIC, reliable)
        self.fields = [rgb_to_imgmsg_fields(rgb) for rgb in images]
        self.results = 0
        self.ages = []  # seconds, of the results since the last sample
        self.counts = {}
        self.node.create_subscription(BoxMasks, "/box_masks", self._on_result,
                                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def _on_result(self, msg):
        self.results += 1
        self.ages.append(time.time() - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    def _on_diagnostics(self, array):
        for status in array.status:
            if status.name.endswith("segment_node: segmentation"):
                values = {kv.key: kv.value for kv in status.values}
                self.counts = {name: int(values[key]) for name, key in COUNTS.items()}

    def send(self, index: int, bad: bool = False) -> None:
        fields = dict(self.fields[index % len(self.fields)])
        if bad:  # one byte short of step x height: a bad frame the node must skip and count
            fields["data"] = fields["data"][:-1]
        msg = Image(**fields)
        msg.header.frame_id = "soak"
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(msg)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(left, 0.01))


def soak(checkpoint: Path, frames: int, seconds: float, rate: float = 30.0, interval: float = 10.0,
         width: int = 640, height: int = 480, device: str = "cpu", bad_every: int = 0, threads: int | None = None,
         report=print) -> list[Sample]:
    """Starts segment_node, soaks it, stops it; one Sample per interval (report gets each as it comes)."""
    node = start_node(checkpoint, device, "reliable", threads, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = rclpy.Context()  # its own: the caller may use rclpy too
    rclpy.init(context=context)
    try:
        scene = render_scene(0, width, height, kind="pallet").image
        # Four different frames for the price of one rendering: the scene and its mirror images.
        client = Client([scene, scene[:, ::-1], scene[::-1], scene[::-1, ::-1]], context)
        deadline = time.monotonic() + 120
        while not client.results:  # model loading and discovery
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"segment_node gave no result (exit code {node.poll()})")
            client.send(0)
            client.spin_for(0.5)
        client.results, client.ages = 0, []

        samples, sent, start = [], 0, time.monotonic()

        def sample():
            if node.poll() is not None:
                raise RuntimeError(f"segment_node exited with code {node.returncode} after {sent} frames")
            ages, client.ages = np.array(client.ages) * 1000, []
            samples.append(Sample(time.monotonic() - start, sent, client.results, *process_resources(node.pid),
                                  float(np.median(ages)) if ages.size else float("nan"),
                                  float(ages.max()) if ages.size else float("nan"), dict(client.counts)))
            report(samples[-1].line())

        next_sample = start + interval
        while sent < frames and time.monotonic() - start < seconds:
            client.send(sent, bad=bad_every > 0 and sent % bad_every == bad_every - 1)
            sent += 1
            client.spin_for(1.0 / rate - (time.monotonic() - start) % (1.0 / rate))
            if time.monotonic() >= next_sample:
                sample()
                next_sample += interval
        client.spin_for(2.0)  # the last results and a diagnostics report
        sample()
        client.executor.shutdown()
        client.node.destroy_node()
        return samples
    finally:
        node.terminate()
        node.wait(timeout=30)
        rclpy.try_shutdown(context=context)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_MODEL, help="the model the node runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    parser.add_argument("--frames", type=int, default=18000, help="stop after this many frames")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between report lines")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--bad-every", type=int, default=0, help="every Nth frame is a bad one (0: none)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the node (default: torch's choice)")
    args = parser.parse_args()
    print(f"segment_node soak on {args.device}: {args.width}x{args.height} rgb8 at {args.rate:g} Hz, up to "
          f"{args.frames} frames or {args.seconds:g} s, checkpoint {args.checkpoint}")
    samples = soak(args.checkpoint, args.frames, args.seconds, args.rate, args.interval, args.width, args.height,
                   args.device, args.bad_every, args.threads, report=lambda line: print(line, flush=True))
    first, last = samples[0], samples[-1]
    print(f"from the first report to the last: RSS {last.rss_mb - first.rss_mb:+.1f} MB, "
          f"threads {last.threads - first.threads:+d}, open files {last.open_files - first.open_files:+d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
