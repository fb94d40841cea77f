#!/usr/bin/env python3
"""The baseline node: torchvision's model(images) called in the subscription callback.

What a first ROS node built on torchvision's Mask R-CNN does, for latency comparisons with
segment_node (scripts/gpu_check.py): every image is converted and run through MaskRCNN.forward
(full-frame pasted float masks) inside the callback, then answered with one mono8 image under
the input's header, 1 where any mask covers the pixel: a single frame, so the comparison measures
inference and post-processing, not megabytes of per-instance full-frame masks on the wire.

    python benchmarks/baseline_node.py model.pt --device cuda [--score-threshold 0] [--detections 50]
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
import torch  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from box_segmentation.image_conversion import imgmsg_to_rgb  # noqa: E402
from box_segmentation.model import load_model  # noqa: E402

IMAGE_TOPIC = "/camera/color/image_raw"
OUTPUT_TOPIC = "/baseline/instances"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--score-threshold", type=float, help="unset: the checkpoint's box_score_thresh")
    parser.add_argument("--detections", type=int, help="most detections per image; unset: the checkpoint's")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, config = load_model(args.checkpoint, device)
    if args.score_threshold is not None:
        model.roi_heads.score_thresh = args.score_threshold
    if args.detections is not None:
        model.roi_heads.detections_per_img = args.detections

    rclpy.init()
    node = rclpy.create_node("baseline_node")
    reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    publisher = node.create_publisher(Image, OUTPUT_TOPIC, reliable)

    def on_image(msg: Image) -> None:
        rgb = imgmsg_to_rgb(msg)
        with torch.inference_mode():
            image = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).float() / 255
            masks = model([image])[0]["masks"][:, 0] > config.mask_threshold
            covered = masks.any(dim=0).to(torch.uint8).cpu().numpy()  # all zeros when nothing is found
        publisher.publish(Image(header=msg.header, height=msg.height, width=msg.width, encoding="mono8",
                                step=msg.width, data=covered.tobytes()))

    node.create_subscription(Image, IMAGE_TOPIC, on_image, reliable)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
