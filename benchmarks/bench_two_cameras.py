#!/usr/bin/env python3
"""Two cameras on one machine: one segment_node with cameras [left, right] (one model, frames of both inferred
in one batch) against two segment_node processes (a model each), side by side in one run.

Both cameras publish --width x --height rgb8 frames at --rate Hz for --seconds (best effort, as camera drivers
do, with config/fastdds_large_frames.xml loaded everywhere, as the launch file does). Reported per setup:
results per second per camera and in total, frames dropped (the nodes keep only the newest frame of each
camera), and the resident memory of the node processes (now and peak, summed), GPU memory where there is one.
The topics are the same in both setups: left/image -> left/box_masks, right/image -> right/box_masks.

Run: python benchmarks/bench_two_cameras.py [--checkpoint model.pt] [--device cpu] [--rate 15] [--seconds 10]
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

import rclpy  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from synthetic import render_scene  # noqa: E402

from box_segmentation.image_conversion import rgb_to_imgmsg_fields  # noqa: E402
from box_segmentation.msg import BoxMasks  # noqa: E402
from box_segmentation.node.fastdds import use_profile  # noqa: E402

SHIPPED_MODEL = REPO / "models" / "carton_r18_synthetic.pt"
CAMERAS = ("left", "right")


def start_nodes(setup: str, args) -> list[subprocess.Popen]:
    base = [sys.executable, "-m", "box_segmentation.node", "--ros-args", "--params-file",
            str(REPO / "config" / "segment.yaml"), "-p", f"checkpoint:={args.checkpoint}", "-p",
            f"device:={args.device}", "-p", "publish_debug_image:=false"]
    if setup == "one process":
        commands = [base + ["-p", "cameras:=[left, right]"]]
    else:  # one unnamed camera each, in the camera's namespace: the same topic names
        commands = [base + ["-r", f"__ns:=/{camera}"] for camera in CAMERAS]
    return [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL) for command in commands]


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def gpu_memory_mib(pids: list[int]) -> str:
    """GPU memory of the processes (nvidia-smi), or '-' without a GPU."""
    try:
        listing = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,"
                                  "nounits"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    used = [float(memory) for pid, memory in (line.split(",") for line in listing.splitlines() if line.strip())
            if int(pid) in pids]
    return f"{sum(used):.0f}" if used else "-"


def run(setup: str, args, image_fields: dict) -> dict:
    nodes = start_nodes(setup, args)
    node = rclpy.create_node("bench_two_cameras")
    try:
        publishers = {camera: node.create_publisher(Image, f"/{camera}/image", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)) for camera in CAMERAS}
        results = {camera: [] for camera in CAMERAS}
        for camera in CAMERAS:
            node.create_subscription(BoxMasks, f"/{camera}/box_masks",
                                     lambda msg, c=camera: results[c].append(time.monotonic()),
                                     QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))

        def send_pair():
            for camera, publisher in publishers.items():
                msg = Image(**image_fields)
                msg.header.frame_id = camera
                msg.header.stamp = node.get_clock().now().to_msg()
                publisher.publish(msg)

        deadline = time.monotonic() + args.start_timeout
        while not all(results.values()):  # model loading, warm-up, discovery
            if any(process.poll() is not None for process in nodes) or time.monotonic() > deadline:
                raise RuntimeError(f"{setup}: segment_node did not start")
            send_pair()
            rclpy.spin_once(node, timeout_sec=0.5)

        for received in results.values():
            received.clear()
        sent, start = 0, time.monotonic()
        while time.monotonic() - start < args.seconds:
            send_pair()
            sent += 1
            due = start + sent / args.rate
            while (left := due - time.monotonic()) > 0:
                rclpy.spin_once(node, timeout_sec=left)
        end = time.monotonic()
        while time.monotonic() - end < 2.0:  # results of the last frames
            rclpy.spin_once(node, timeout_sec=0.1)
        counted = {camera: sum(start <= t <= end + 2.0 for t in times) for camera, times in results.items()}
        memory = [memory_mib(process.pid) for process in nodes]
        gpu = gpu_memory_mib([process.pid for process in nodes])
    finally:
        node.destroy_node()
        for process in nodes:
            process.terminate()
        for process in nodes:
            process.wait(timeout=60)
    return {"setup": setup, "processes": len(nodes), "sent": sent,
            **{f"{camera} results/s": counted[camera] / args.seconds for camera in CAMERAS},
            "total results/s": sum(counted.values()) / args.seconds,
            "dropped": 2 * sent - sum(counted.values()),
            "RSS MiB": sum(rss for rss, _ in memory), "peak RSS MiB": sum(peak for _, peak in memory),
            "GPU MiB": gpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_MODEL, help="the model the nodes run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rate", type=float, default=15.0, help="frames per second of each camera")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds for the nodes to start")
    args = parser.parse_args()

    use_profile()  # for this process and the nodes it starts
    image_fields = rgb_to_imgmsg_fields(render_scene(0, args.width, args.height, kind="pallet").image)
    rclpy.init()
    try:
        rows = [run(setup, args, image_fields) for setup in ("one process", "two processes")]
    finally:
        rclpy.try_shutdown()

    print(f"\ntwo cameras, {args.width}x{args.height} rgb8 at {args.rate:g} Hz each for {args.seconds:g} s, "
          f"segment_node on {args.device}, checkpoint {args.checkpoint}")
    columns = [key for key in rows[0] if key != "setup"]
    print(f"{'setup':<15}" + "".join(f"{column:>17}" for column in columns))
    for row in rows:
        cells = (f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns)
        print(f"{row['setup']:<15}" + "".join(f"{cell:>17}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
