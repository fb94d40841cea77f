#!/usr/bin/env python3
"""Best-effort camera frames between two processes on this host, with and without config/fastdds_large_frames.xml
loaded in the publisher and in the subscriber: how many frames arrive, side by side in one run.

A publisher process sends --frames rgb8 frames of each size at --rate Hz, best effort as camera drivers publish;
a subscriber process counts what arrives. Each size runs four ways: the profile in neither process, only in the
subscriber, only in the publisher, in both.

Run: python benchmarks/bench_fastdds_profile.py [--frames 30] [--rate 15] [--sizes 640x480 1280x720]
"""

import argparse
import os
import subprocess
import sys
import time

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))

TOPIC = "/bench_fastdds_profile/image"


def publish(width: int, height: int, frames: int, rate: float) -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_fastdds_publisher")
    publisher = node.create_publisher(Image, TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    while publisher.get_subscription_count() == 0:
        time.sleep(0.05)
    time.sleep(1.0)  # discovery of the subscriber's locators completes after the match
    msg = Image(width=width, height=height, encoding="rgb8", step=3 * width, data=bytes(3 * width * height))
    for _ in range(frames):
        publisher.publish(msg)
        time.sleep(1 / rate)
    time.sleep(1.0)


def subscribe(seconds: float) -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_fastdds_subscriber")
    received = []
    node.create_subscription(Image, TOPIC, received.append, QoSProfile(depth=5,
                                                                        reliability=ReliabilityPolicy.BEST_EFFORT))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(len(received))


def run(width: int, height: int, args, publisher_profile: bool, subscriber_profile: bool) -> int:
    from box_segmentation.node.fastdds import profile_path

    def env(with_profile):
        environ = {key: value for key, value in os.environ.items() if key != "FASTDDS_DEFAULT_PROFILES_FILE"}
        return {**environ, "FASTDDS_DEFAULT_PROFILES_FILE": str(profile_path())} if with_profile else environ

    seconds = args.frames / args.rate + 20.0  # start-up and discovery included
    subscriber = subprocess.Popen([sys.executable, __file__, "--role", "subscriber", "--seconds", str(seconds)],
                                  env=env(subscriber_profile), stdout=subprocess.PIPE, text=True)
    subprocess.run([sys.executable, __file__, "--role", "publisher", "--size", f"{width}x{height}", "--frames",
                    str(args.frames), "--rate", str(args.rate)], env=env(publisher_profile), check=True)
    return int(subscriber.communicate()[0].split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"])
    parser.add_argument("--role", choices=["publisher", "subscriber"], help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "publisher":
        publish(*map(int, args.size.split("x")), args.frames, args.rate)
        return 0
    if args.role == "subscriber":
        subscribe(args.seconds)
        return 0

    ways = {"neither": (False, False), "subscriber only": (False, True), "publisher only": (True, False),
            "both": (True, True)}
    print(f"best-effort rgb8 frames received of {args.frames} sent at {args.rate:g} Hz, profile loaded in:")
    print(f"{'size':<10}" + "".join(f"{way:>17}" for way in ways))
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        counts = [run(width, height, args, *way) for way in ways.values()]
        print(f"{size:<10}" + "".join(f"{count:>17}" for count in counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
