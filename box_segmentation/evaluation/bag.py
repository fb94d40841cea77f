"""Rosbag tools: a COCO dataset as a bag, and replaying a bag for evaluation.

    python -m box_segmentation.evaluation.bag from-dataset DATA --split val --out BAG [--topic T] [--fps F]
    python -m box_segmentation.evaluation.bag replay BAG --checkpoint FILE [--annotations JSON]
                                   [--output-bag OUT] [--report report.json] [--live [--rate K]]

Offline replay reads the frames with `rosbags` and runs the Segmenter in this process (no ROS
needed); `--live` publishes them to a running segment_node and evaluates what it publishes.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from box_segmentation.evaluation.bag_io import (
    ANNOTATIONS_FILE,
    BOX_MASKS_TYPE,
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    STORAGE,
    BagError,
    Undecodable,
    close_writer,
    make_typestore,
    open_writer,
    read_annotations,
    read_messages,
)
from box_segmentation.evaluation.scd_layout import split_paths
from box_segmentation.evaluation.scoring import Scorer, latency_summary
from box_segmentation.image_conversion import ImageConversionError, compressed_to_rgb, imgmsg_to_rgb
from box_segmentation.messages import to_box_masks
from box_segmentation.model import CheckpointError
from box_segmentation.segmenter import DeviceUnavailableError, Segmenter

DEFAULT_TOPIC = "/camera/color/image_raw"
OUTPUT_TOPIC = "/box_masks"
FRAME_ID = "camera_color_optical_frame"
FIRST_STAMP_NS = 1_700_000_000 * 10**9  # fixed, so the same dataset always makes the same bag


def from_dataset(data, split: str, out, topic: str = DEFAULT_TOPIC, fps: float = 10.0,
                 compressed: bool = False, storage: str = "mcap") -> Path:
    """Writes the split's images as a bag, and its annotations (each image with its stamp)."""
    images_dir, annotations_path = split_paths(data, split)
    coco = read_annotations(annotations_path)
    typestore = make_typestore()
    types = typestore.types
    msgtype = COMPRESSED_TYPE if compressed else IMAGE_TYPE
    writer = open_writer(out, storage)
    try:
        connection = writer.add_connection(topic, msgtype, typestore=typestore)
        images = sorted(coco["images"], key=lambda image: image["id"])
        for index, image in enumerate(tqdm(images, desc=f"{split} -> {out}", unit="frame")):
            stamp = FIRST_STAMP_NS + round(index * 1e9 / fps)
            header = types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
                frame_id=FRAME_ID)
            path = images_dir / image["file_name"]
            if not path.is_file():
                raise BagError(f"image {path} of {annotations_path} does not exist")
            encoded = np.fromfile(path, np.uint8)
            if compressed:  # the file's own bytes: no re-encoding loss
                fmt = "png" if path.suffix.lower() == ".png" else "jpeg"
                message = types[COMPRESSED_TYPE](header=header, format=fmt, data=encoded)
            else:
                rgb = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                height, width = rgb.shape[:2]
                message = types[IMAGE_TYPE](header=header, height=height, width=width, encoding="rgb8",
                                            is_bigendian=0, step=width * 3, data=rgb.reshape(-1))
            writer.write(connection, stamp, typestore.serialize_cdr(message, msgtype))
            image["stamp_ns"] = stamp
    finally:
        close_writer(writer)
    coco["bag"] = {"topic": topic, "fps": fps, "split": split}
    (Path(out) / ANNOTATIONS_FILE).write_text(json.dumps(coco))
    return Path(out)


def to_rgb(message) -> np.ndarray:
    """A deserialized Image or CompressedImage (rosbags or rclpy alike) as RGB."""
    return compressed_to_rgb(message) if hasattr(message, "format") else imgmsg_to_rgb(message)


def replay_offline(bag, checkpoint, image_topic: str = DEFAULT_TOPIC, annotations: dict | None = None,
                   output_bag=None, device: str = "auto", score_threshold: float | None = None) -> dict:
    """Runs the Segmenter on every frame; returns the report (latency, throughput, boxes, accuracy).
    A frame that cannot be decoded is skipped and counted (undecodable_frames, with the first errors)."""
    typestore = make_typestore()
    segmenter = Segmenter(checkpoint, device=device, score_threshold=score_threshold)
    scorer = Scorer(annotations)
    writer = open_writer(output_bag) if output_bag else None
    if writer:
        from rclpy.serialization import serialize_message  # our BoxMasks' own CDR encoding
    connections = None
    latencies, boxes_per_frame, undecodable = [], [], []
    started = time.perf_counter()
    try:
        for stamp, message in tqdm(read_messages(bag, image_topic, typestore), desc="replay", unit="frame"):
            frame_started = time.perf_counter()
            try:
                if isinstance(message, Undecodable):
                    raise ImageConversionError(f"message does not deserialize: {message.error}")
                rgb = to_rgb(message)
            except ImageConversionError as error:
                undecodable.append(f"frame at {stamp} ns: {error}")
                continue
            instances = segmenter(rgb)
            latencies.append(time.perf_counter() - frame_started)
            boxes_per_frame.append(len(instances))
            height, width = rgb.shape[:2]
            scorer.add(stamp, instances, height, width)
            if writer:
                if connections is None:
                    connections = (writer.add_connection(image_topic, message.__msgtype__, typestore=typestore),
                                   writer.add_connection(OUTPUT_TOPIC, BOX_MASKS_TYPE, typestore=typestore))
                writer.write(connections[0], stamp, typestore.serialize_cdr(message, message.__msgtype__))
                result = to_box_masks(instances, message.header, height, width)
                writer.write(connections[1], stamp, serialize_message(result))
    finally:
        if writer:
            close_writer(writer)
    if not latencies:
        raise BagError(f"no frame of {bag} could be decoded: {undecodable[0]}")
    elapsed = time.perf_counter() - started
    return {"mode": "offline", "frames": len(latencies), "undecodable_frames": len(undecodable),
            "undecodable_examples": undecodable[:3], "device": str(segmenter.device),
            "latency": latency_summary(latencies), "throughput_fps": len(latencies) / elapsed,
            "boxes_per_frame": float(np.mean(boxes_per_frame)), "accuracy": scorer.metrics()}


def print_report(report: dict) -> None:
    latency = report["latency"]
    rows = [("mode", report["mode"]), ("frames", report["frames"]), ("device", report.get("device", "-")),
            ("latency p50 / p95 / max", f"{latency['p50_ms']:.1f} / {latency['p95_ms']:.1f} / "
                                        f"{latency['max_ms']:.1f} ms"),
            ("throughput", f"{report['throughput_fps']:.2f} frames/s"),
            ("boxes per frame", f"{report['boxes_per_frame']:.1f}")]
    if "dropped" in report:
        rows.insert(2, ("dropped by the node", report["dropped"]))
    if report.get("undecodable_frames"):
        rows.insert(2, ("undecodable, skipped", f"{report['undecodable_frames']} (first: "
                                                f"{report['undecodable_examples'][0]})"))
    accuracy_metrics = report["accuracy"]
    if accuracy_metrics:
        rows += [("mask AP / AR (IoU 0.50:0.95)", f"{accuracy_metrics['segm_AP']:.3f} / "
                                                  f"{accuracy_metrics['segm_AR']:.3f}"),
                 ("mask AP50", f"{accuracy_metrics['segm_AP50']:.3f}"),
                 ("box AP", f"{accuracy_metrics['bbox_AP']:.3f}")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m box_segmentation.evaluation.bag", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("from-dataset", help="write a COCO dataset split as a bag",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    write.add_argument("data", help="dataset folder in SCD's layout (coco_carton/oneclass_carton/...)")
    write.add_argument("--split", default="val")
    write.add_argument("--out", required=True, help="bag folder to create")
    write.add_argument("--topic", default=DEFAULT_TOPIC)
    write.add_argument("--fps", type=float, default=10.0, help="frame rate of the stamps")
    write.add_argument("--compressed", action="store_true", help="sensor_msgs/CompressedImage (the files' bytes)")
    write.add_argument("--storage", choices=sorted(STORAGE), default="mcap")
    replay = commands.add_parser("replay", help="run the model on a bag's frames and report",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    replay.add_argument("bag")
    replay.add_argument("--checkpoint", help="model checkpoint (offline replay)")
    replay.add_argument("--image-topic", default=DEFAULT_TOPIC)
    replay.add_argument("--annotations", help=f"COCO json with stamp_ns per image (default: the bag's "
                                              f"{ANNOTATIONS_FILE} if there)")
    replay.add_argument("--output-bag", help="write the frames and the BoxMasks results to this bag (offline)")
    replay.add_argument("--report", help="write the report as json here")
    replay.add_argument("--device", default="auto")
    replay.add_argument("--score-threshold", type=float, default=None,
                        help="offline: minimum score (default: the checkpoint's)")
    replay.add_argument("--live", action="store_true", help="publish to a running segment_node and evaluate "
                                                            "its /box_masks replies")
    replay.add_argument("--rate", type=float, default=1.0, help="live: speed-up over the recorded rate")
    replay.add_argument("--output-topic", default=OUTPUT_TOPIC, help="live: the node's output topic")
    replay.add_argument("--timeout", type=float, default=10.0,
                        help="live: seconds to wait for the node, and for replies after the last frame")
    args = parser.parse_args(argv)
    if args.command == "replay" and not args.live and not args.checkpoint:
        parser.error("offline replay needs --checkpoint (or use --live with a running node)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "from-dataset":
            out = from_dataset(args.data, args.split, args.out, args.topic, args.fps, args.compressed, args.storage)
            print(f"wrote {out} ({out / ANNOTATIONS_FILE} maps the images to their stamps)")
            return 0
        annotations_path = args.annotations or Path(args.bag) / ANNOTATIONS_FILE
        annotations = read_annotations(annotations_path) if args.annotations or annotations_path.exists() else None
        if args.live:
            from box_segmentation.evaluation.live_replay import replay_live  # rclpy only for live replay

            report = replay_live(args.bag, args.image_topic, args.output_topic, annotations, args.rate,
                                 args.timeout)
        else:
            report = replay_offline(args.bag, args.checkpoint, args.image_topic, annotations, args.output_bag,
                                    args.device, args.score_threshold)
    except (BagError, CheckpointError, ImageConversionError, DeviceUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_report(report)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
