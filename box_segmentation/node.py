"""segment_node: camera images in, carton instance masks out on box_masks.

The subscription callback only drops the message into a one-slot mailbox; a worker thread
takes the newest frame, converts, infers and publishes. A frame still waiting when a newer
one arrives is dropped (and counted), so results always describe the newest image and no
queue builds up when inference is slower than the camera.

Run: ros2 run box_segmentation segment_node --ros-args -p checkpoint:=/path/model.pt
"""

import sys
import textwrap
import threading
import time
from collections import Counter, defaultdict

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image

from box_segmentation.image_conversion import (
    ImageConversionError,
    compressed_to_rgb,
    imgmsg_to_rgb,
    rgb_to_imgmsg_fields,
)
from box_segmentation.messages import to_box_masks
from box_segmentation.model import CheckpointError
from box_segmentation.msg import BoxMasks
from box_segmentation.segmenter import DeviceUnavailableError, Segmenter

NODE_NAME = "segment_node"

# Every parameter: name -> (default, description, read_only). The model and the wiring are
# fixed at start-up, so all are read-only: change them by restarting the node.
PARAMETERS = {
    "checkpoint": ("", "Path of the model checkpoint (.pt) written by training. Required.", True),
    "device": ("auto", "auto (CUDA if available, else CPU with a warning), cpu, cuda or cuda:N.", True),
    "half": (False, "Run the model in float16 (CUDA only).", True),
    "score_threshold": (-1.0, "Minimum detection score in [0, 1]; -1: the checkpoint's value.", True),
    "mask_threshold": (-1.0, "Mask probability above which a pixel is carton, in [0, 1]; -1: the checkpoint's.",
                       True),
    "max_detections": (-1, "Most instances published per image, highest scores first; -1: the checkpoint's.",
                       True),
    "image_topic": ("/camera/color/image_raw",
                    "Input sensor_msgs/Image topic. With input_type compressed, the node subscribes to "
                    "<image_topic>/compressed, or to image_topic itself if it already ends in /compressed.", True),
    "input_type": ("raw", "raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage, jpeg or png).", True),
    "input_reliability": ("best_effort",
                          "Input QoS reliability: best_effort (as camera drivers publish) or reliable.", True),
    "output_topic": ("box_masks", "BoxMasks output topic; relative, so /box_masks unless namespaced.", True),
    "publish_debug_image": (True, "Publish an overlay on <output_topic>/debug_image, drawn only while "
                                  "someone subscribes.", True),
}
RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
CONVERTERS = {"raw": (Image, imgmsg_to_rgb), "compressed": (CompressedImage, compressed_to_rgb)}
STAGES = ("convert", "preprocess", "infer", "postprocess", "publish")
DIAGNOSTICS_PERIOD = 1.0  # seconds
BAD_FRAME_LOG_PERIOD = 5.0  # seconds between bad-frame warnings, so a broken camera cannot flood the log


class StartupError(Exception):
    """A configuration the node cannot run with; main() logs it as one fatal line."""


class LatestFrame:
    """One-slot mailbox: put() replaces a frame not yet taken; take() waits for one."""

    def __init__(self):
        self._condition = threading.Condition()
        self._frame = None
        self._closed = False

    def put(self, frame) -> bool:
        """Stores frame; True if it replaced (dropped) one that was still waiting."""
        with self._condition:
            replaced = self._frame is not None
            self._frame = frame
            self._condition.notify()
        return replaced

    def take(self):
        """The newest frame, waiting for one; None once closed."""
        with self._condition:
            while self._frame is None and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class Statistics:
    """Event counts and stage durations, in total and since the last report; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._totals = Counter()
        self._window_counts = Counter()
        self._window_times = defaultdict(list)

    def count(self, event: str) -> None:
        with self._lock:
            self._totals[event] += 1
            self._window_counts[event] += 1

    def add_time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._window_times[stage].append(seconds)

    def report(self) -> tuple[Counter, Counter, dict]:
        """(totals, counts in the window, durations in the window), and starts a new window."""
        with self._lock:
            window = self._window_counts, self._window_times
            self._window_counts, self._window_times = Counter(), defaultdict(list)
            return Counter(self._totals), *window


class SegmentNode(Node):
    def __init__(self):
        super().__init__(NODE_NAME)
        try:
            self._params = self._declare_parameters()
            self._segmenter = self._load_segmenter()
        except BaseException:
            self.destroy_node()
            raise
        for warning in self._segmenter.warnings:
            self.get_logger().warning(warning)

        p = self._params
        message_type, self._convert = CONVERTERS[p["input_type"]]
        image_topic = p["image_topic"]
        if p["input_type"] == "compressed" and not image_topic.endswith("/compressed"):
            image_topic += "/compressed"  # image_transport's naming
        # Depth 1: only the newest frame matters; older ones would only be dropped later.
        input_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                               reliability=RELIABILITY[p["input_reliability"]],
                               durability=DurabilityPolicy.VOLATILE)
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.VOLATILE)
        self._publisher = self.create_publisher(BoxMasks, p["output_topic"], output_qos)
        self._debug_publisher = None
        if p["publish_debug_image"]:
            debug_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                   durability=DurabilityPolicy.VOLATILE)  # a viewer wants the latest only
            self._debug_publisher = self.create_publisher(Image, p["output_topic"] + "/debug_image", debug_qos)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", output_qos)

        self._stats = Statistics()
        self._mailbox = LatestFrame()
        self._subscription = self.create_subscription(message_type, image_topic, self._on_image, input_qos)
        self._last_report = time.monotonic()
        self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="segment_worker", daemon=True)
        self._worker.start()

        self.get_logger().info(
            f"ready: {self._segmenter.config.arch} for {list(self._segmenter.classes)} on {self._segmenter.device}; "
            f"{p['input_type']} images from {self._subscription.topic_name} ({p['input_reliability']}), "
            f"masks on {self._publisher.topic_name}"
        )

    def _declare_parameters(self) -> dict:
        values = {}
        for name, (default, description, read_only) in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=description, read_only=read_only)
            try:
                values[name] = self.declare_parameter(name, default, descriptor).value
            except InvalidParameterTypeException as error:
                raise StartupError(f"parameter {name} must be a {type(default).__name__}: {error}") from error
        choices = {"input_type": CONVERTERS, "input_reliability": RELIABILITY}
        for name, allowed in choices.items():
            if values[name] not in allowed:
                raise StartupError(f"parameter {name} must be one of {sorted(allowed)}, not {values[name]!r}")
        if not values["checkpoint"]:
            raise StartupError("parameter checkpoint is required: the path of a model checkpoint (.pt)")
        return values

    def _load_segmenter(self) -> Segmenter:
        p = self._params

        def unless_default(name):  # -1 means: what the checkpoint says
            return None if p[name] == -1 else p[name]

        try:
            return Segmenter(p["checkpoint"], device=p["device"], half=p["half"],
                             score_threshold=unless_default("score_threshold"),
                             mask_threshold=unless_default("mask_threshold"),
                             max_detections=unless_default("max_detections"))
        except (CheckpointError, DeviceUnavailableError, ValueError) as error:
            # One line, however torch words it; a list of hundreds of mismatched weights helps nobody.
            raise StartupError(textwrap.shorten(str(error), width=500, placeholder=" [...]")) from error

    def _on_image(self, msg) -> None:
        self._stats.count("received")
        if self._mailbox.put(msg):
            self._stats.count("dropped")

    def _work(self) -> None:
        while (msg := self._mailbox.take()) is not None:
            try:
                self._process(msg)
            except Exception as error:  # keep serving: one failed frame must not stop the node
                if not self.context.ok():
                    return  # Ctrl-C while a frame was in hand: its result has nowhere to go
                self._stats.count("failed")
                self.get_logger().error(f"segmentation failed: {error!r}", throttle_duration_sec=BAD_FRAME_LOG_PERIOD)

    def _process(self, msg) -> None:
        start = time.perf_counter()
        try:
            rgb = self._convert(msg)
        except ImageConversionError as error:
            self._stats.count("bad")
            self.get_logger().warning(f"skipping bad image (frame_id {msg.header.frame_id!r}): {error}",
                                      throttle_duration_sec=BAD_FRAME_LOG_PERIOD)
            return
        self._stats.add_time("convert", time.perf_counter() - start)

        instances = self._segmenter(rgb)
        for stage in ("preprocess", "infer", "postprocess"):
            self._stats.add_time(stage, self._segmenter.last_timings[stage])

        start = time.perf_counter()
        result = to_box_masks(instances, msg.header, rgb.shape[0], rgb.shape[1])
        self._publisher.publish(result)
        self._stats.add_time("publish", time.perf_counter() - start)
        self._stats.count("published")
        age = self.get_clock().now() - Time.from_msg(msg.header.stamp)
        self._stats.add_time("age", age.nanoseconds * 1e-9)

        # Drawing costs time: only for an actual viewer.
        if self._debug_publisher is not None and self._debug_publisher.get_subscription_count() > 0:
            overlay = draw_overlay(rgb, result)
            self._debug_publisher.publish(Image(header=msg.header, **rgb_to_imgmsg_fields(overlay)))

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        elapsed, self._last_report = now - self._last_report, now
        totals, counts, times = self._stats.report()

        def milliseconds(values, reduce):
            return f"{1000 * reduce(values):.1f}" if values else "nan"

        values = {
            "device": str(self._segmenter.device),
            "input rate (Hz)": f"{counts['received'] / elapsed:.1f}",
            "output rate (Hz)": f"{counts['published'] / elapsed:.1f}",
            "frames received": str(totals["received"]),
            "frames published": str(totals["published"]),
            "frames dropped": str(totals["dropped"]),
            "frames dropped per second": f"{counts['dropped'] / elapsed:.1f}",
            "bad frames": str(totals["bad"]),
            "failed frames": str(totals["failed"]),
        }
        for stage in (*STAGES, "age"):
            values[f"{stage} mean (ms)"] = milliseconds(times[stage], np.mean)
            values[f"{stage} max (ms)"] = milliseconds(times[stage], max)

        if counts["failed"]:
            level, message = DiagnosticStatus.ERROR, "segmentation failing"
        elif counts["bad"]:
            level, message = DiagnosticStatus.WARN, "bad input images"
        elif not counts["received"]:
            level, message = DiagnosticStatus.OK, "waiting for images"
        else:
            rates = values["input rate (Hz)"], values["output rate (Hz)"]
            level, message = DiagnosticStatus.OK, "{} Hz in, {} Hz out".format(*rates)
        name = f"{self.get_fully_qualified_name().lstrip('/')}: segmentation"  # diagnostic_aggregator style
        status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=values["device"],
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_publisher.publish(array)

    def stop(self) -> None:
        """Lets the worker finish its frame and end."""
        self._mailbox.close()
        self._worker.join(timeout=10.0)


def draw_overlay(rgb: np.ndarray, result: BoxMasks) -> np.ndarray:
    """The image with each instance's mask tinted, its rotated rectangle and its label."""
    overlay = rgb.copy()
    for box in result.boxes:
        colour = np.array(cv2.applyColorMap(np.uint8([[box.id * 47 % 256]]), cv2.COLORMAP_JET)[0, 0][::-1])
        roi = box.roi
        mask = np.frombuffer(bytes(box.mask), np.uint8).reshape(roi.height, roi.width).astype(bool)
        region = overlay[roi.y_offset:roi.y_offset + roi.height, roi.x_offset:roi.x_offset + roi.width]
        region[mask] = (region[mask] // 2 + colour // 2).astype(np.uint8)
        r = box.rotated_rect
        corners = cv2.boxPoints(((r.center_x, r.center_y), (r.length, r.width), np.degrees(r.angle)))
        cv2.polylines(overlay, [corners.round().astype(np.int32)], True, colour.tolist(), 1)
        cv2.putText(overlay, f"{box.class_name} {box.score:.2f}", (roi.x_offset, max(roi.y_offset - 2, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour.tolist(), 1)
    return overlay


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentNode()
        rclpy.spin(node)
    except StartupError as error:
        get_logger(NODE_NAME).fatal(str(error))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C or SIGTERM: a normal stop
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
