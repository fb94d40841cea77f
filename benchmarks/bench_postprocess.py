#!/usr/bin/env python3
"""Mask post-processing and message size: our cropped path against torchvision's default.

For N synthetic detections (28x28 mask probabilities and boxes of carton size) in a 1280x720
image, both paths start from the ROI heads' output and end with bytes ready for the wire:

  torchvision: paste_masks_in_image to full-frame float masks, threshold, then each mask as a
               full-frame mono8 sensor_msgs/Image (what a node built on model(images) sends);
  ours:        masks.shapes_in_boxes (each mask resized to its box only by OpenCV, torchvision's pixels kept; roi, area,
               centroid and rotated rect of all masks at once from their row runs), one BoxMasks message.

Run: python benchmarks/bench_postprocess.py [--counts 10 50 150] [--repeats 3]
"""

import argparse
import array
import math
import time

import numpy as np
import torch
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from torchvision.models.detection.roi_heads import paste_masks_in_image

from box_segmentation.masks import shapes_in_boxes
from box_segmentation.messages import to_box_masks
from box_segmentation.types import Instance

MASK_THRESHOLD = 0.5


def synthetic_detections(count: int, height: int, width: int, seed: int = 0):
    """Box-shaped mask probabilities (soft edges, a little rotation and noise) and carton-sized boxes."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(-1, 1, 28)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    probs = []
    for _ in range(count):
        angle = rng.uniform(-0.2, 0.2)
        u, v = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
        edge = 0.8 - np.maximum(np.abs(u), np.abs(v)) + rng.normal(0, 0.05, size=u.shape)
        probs.append(1 / (1 + np.exp(-12 * edge)))
    sizes = rng.uniform(60, 260, size=(count, 2))
    corners = rng.uniform(0, 1, size=(count, 2)) * ([width, height] - sizes)
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    return torch.tensor(np.array(probs), dtype=torch.float32), torch.tensor(boxes, dtype=torch.float32)


def evict_caches(size: int = 64 << 20) -> None:
    """Write and read a buffer larger than the CPU caches, as a frame's inference does before post-processing."""
    buffer = np.ones(size, np.uint8)
    buffer.sum()


def torchvision_path(probs, boxes, height, width, header) -> tuple[float, float, int]:
    start = time.perf_counter()
    pasted = paste_masks_in_image(probs[:, None], boxes, (height, width))[:, 0]
    masks = (pasted > MASK_THRESHOLD).to(torch.uint8).numpy()
    processed = time.perf_counter()
    images = [Image(header=header, height=height, width=width, encoding="mono8", step=width,
                    data=array.array("B", mask.tobytes())) for mask in masks]
    wire = sum(len(serialize_message(image)) for image in images)
    return processed - start, time.perf_counter() - start, wire


def cropped_path(probs, boxes, height, width, header) -> tuple[float, float, int]:
    start = time.perf_counter()
    instances = []
    for box, shape in zip(boxes.tolist(), shapes_in_boxes(probs, boxes, (height, width), MASK_THRESHOLD), strict=True):
        if shape is not None:
            instances.append(Instance(tuple(box), 0.9, 1, "carton", shape.roi, shape.mask, shape.area,
                                      shape.centroid, shape.rotated_rect))
    processed = time.perf_counter()
    wire = len(serialize_message(to_box_masks(instances, header, height, width)))
    return processed - start, time.perf_counter() - start, wire


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 50, 150])
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs per path (the CPU is shared)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    header = Header(frame_id="camera_color_optical_frame")

    print(f"{args.width}x{args.height}, mask threshold {MASK_THRESHOLD}, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")
    print("post = masks on the host as uint8 (ours: + roi, area, centroid, rotated rect); "
          "to wire = post + message building + serialization")
    columns = ("instances", "tv post ms", "ours post ms", "speed-up", "tv to wire ms", "ours to wire ms", "speed-up",
               "tv bytes", "ours bytes", "smaller")
    print(" | ".join(columns))
    print(" | ".join("-" * len(column) for column in columns))
    for count in args.counts:
        probs, boxes = synthetic_detections(count, args.height, args.width)
        # Interleaved, so both paths see the same load; best of each. Each starts with the CPU caches as a
        # frame's inference leaves them (evicted), not as the other path left them.
        runs = {"tv": [], "ours": []}
        for _ in range(args.repeats):
            for name, path in (("tv", torchvision_path), ("ours", cropped_path)):
                evict_caches()
                runs[name].append(path(probs, boxes, args.height, args.width, header))
        (tv_post, tv_wire, tv_bytes), (our_post, our_wire, our_bytes) = (
            (min(r[0] for r in runs[name]), min(r[1] for r in runs[name]), runs[name][0][2]) for name in ("tv", "ours"))
        print(f"{count} | {tv_post * 1e3:.1f} | {our_post * 1e3:.1f} | {tv_post / our_post:.0f}x | "
              f"{tv_wire * 1e3:.1f} | {our_wire * 1e3:.1f} | {tv_wire / our_wire:.0f}x | "
              f"{tv_bytes:,} | {our_bytes:,} | {tv_bytes / our_bytes:.0f}x")

if __name__ == "__main__":
    main()
