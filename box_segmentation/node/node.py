"""segment_node: camera images in, carton instance masks out on box_masks.

The subscription callback only drops the message into a one-slot mailbox; a worker thread
takes the newest frame, converts, infers and publishes. A frame still waiting when a newer
one arrives is dropped (and counted), so results always describe the newest image and no
queue builds up when inference is slower than the camera.

With depth_topic set, each frame is paired by stamp with an aligned depth image (the cached one
closest in stamp, within depth_sync_tolerance) and every carton gets a pick pose and rank
(box_segmentation.pick_pose), in the camera optical frame of the image's header: there is no TF here.
A frame without a usable depth image is still published, its boxes with pose_status POSE_NONE.

Run: ros2 run box_segmentation segment_node --ros-args -p checkpoint:=/path/model.pt
"""

import sys
import textwrap
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from box_segmentation.image_conversion import (
    ImageConversionError,
    compressed_to_rgb,
    depth_image_to_array,
    imgmsg_to_rgb,
    rgb_to_imgmsg_fields,
)
from box_segmentation.messages import add_poses, stamp_ns, to_box_masks
from box_segmentation.model import CheckpointError
from box_segmentation.msg import BoxMasks
from box_segmentation.node.diagnostics import Statistics
from box_segmentation.node.frame_sync import DepthCache, LatestFrame
from box_segmentation.node.visualization import draw_overlay, pick_markers
from box_segmentation.pick_pose import CartonPose, Intrinsics, PoseStatus, depth_to_metres, estimate_poses, pick_order
from box_segmentation.segmenter import DeviceUnavailableError, Segmenter

NODE_NAME = "segment_node"

# Every parameter: name -> (default, description, read_only). The model and the wiring are
# fixed at start-up, so all are read-only: change them by restarting the node.
PARAMETERS = {
    "checkpoint": ("", "Path of the model checkpoint (.pt) written by training. Required.", True),
    "device": ("auto", "auto (CUDA if available, else CPU with a warning), cpu, cuda or cuda:N.", True),
    "precision": ("fp32", "fp32; bf16 (CPUs with AVX512-BF16 or AMX, or CUDA); fp16 (CUDA). What the device "
                          "cannot run falls back to fp32 with a warning.", True),
    "threads": (0, "torch CPU threads, set once at start; 0: torch's default (one per physical core).", True),
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
    "depth_topic": ("", "Depth sensor_msgs/Image (16UC1, mono16 or 32FC1) registered to the colour image pixel for "
                        "pixel, e.g. /camera/aligned_depth_to_color/image_raw: every carton then gets a pick pose and "
                        "rank. Empty: no depth, masks only. Read with input_reliability.", True),
    "camera_info_topic": ("", "sensor_msgs/CameraInfo of the colour camera (aligned depth shares its intrinsics), "
                              "e.g. /camera/color/camera_info. Required with depth_topic.", True),
    "depth_sync_tolerance": (0.02, "Seconds: the largest stamp difference between a colour image and the depth "
                                   "image paired with it. A frame with no depth image that close gets no poses.",
                             True),
    "depth_divisor": (1000.0, "16UC1 and mono16 depth units per metre: 1000 = millimetres, the ROS convention. "
                              "32FC1 depth is in metres.", True),
    "up_in_camera": ([], "Gravity-up as a fixed [x, y, z] in the camera optical frame (x right, y down, z forward), "
                         "e.g. [0.0, -1.0, 0.0] for a level camera; chooses the top faces and the layers. Empty: "
                         "unknown, the top face is the one most squarely facing the camera (right for a camera "
                         "above the stack looking down).", True),
    "publish_markers": (True, "With depth: RViz markers on <output_topic>/markers (a box and the pick rank per "
                              "carton with a pose), built only while someone subscribes.", True),
}
RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
CONVERTERS = {"raw": (Image, imgmsg_to_rgb), "compressed": (CompressedImage, compressed_to_rgb)}
STAGES = ("convert", "preprocess", "infer", "postprocess", "poses", "publish")
# Frames published without poses although depth is configured: event -> diagnostics key.
NO_POSE_REASONS = {"no depth match": "frames without depth match", "bad depth": "frames with bad depth",
                   "no camera info": "frames without camera info"}
DEPTH_CACHE_SIZE = 10  # depth images kept for pairing: a third of a second at 30 Hz
DEPTH_LATE_WAIT = 0.005  # seconds, beyond the tolerance, to wait after inference for a late depth image
DIAGNOSTICS_PERIOD = 1.0  # seconds
BAD_FRAME_LOG_PERIOD = 5.0  # seconds between bad-frame warnings, so a broken camera cannot flood the log


class StartupError(Exception):
    """A configuration the node cannot run with; main() logs it as one fatal line."""


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
        self._depth_cache = None
        if p["depth_topic"]:
            self._start_depth(input_qos, output_qos)
        self._last_report = time.monotonic()
        self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="segment_worker", daemon=True)
        self._worker.start()

        self.get_logger().info(
            f"ready: {self._segmenter.config.arch} for {list(self._segmenter.classes)} on {self._segmenter.device}; "
            f"{p['input_type']} images from {self._subscription.topic_name} ({p['input_reliability']}), "
            f"masks on {self._publisher.topic_name}"
            + (f"; depth from {p['depth_topic']}, intrinsics from {p['camera_info_topic']}, up "
               f"{'unknown' if self._up is None else list(self._up)}" if self._depth_cache is not None else "")
        )

    def _start_depth(self, input_qos: QoSProfile, output_qos: QoSProfile) -> None:
        p = self._params
        self._up = np.array(p["up_in_camera"]) if p["up_in_camera"] else None
        self._depth_cache = DepthCache(DEPTH_CACHE_SIZE)
        self._camera_info = None  # the latest: intrinsics rarely change
        # A few images of slack: the cache, not the middleware, decides which ones are kept.
        depth_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=input_qos.reliability,
                               durability=DurabilityPolicy.VOLATILE)
        self.create_subscription(Image, p["depth_topic"], self._on_depth, depth_qos)
        self.create_subscription(CameraInfo, p["camera_info_topic"], self._on_camera_info, input_qos)
        self._poses_publisher = self.create_publisher(PoseArray, p["output_topic"] + "/poses", output_qos)
        self._markers_publisher = None
        if p["publish_markers"]:
            markers_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                     durability=DurabilityPolicy.VOLATILE)  # a viewer wants the latest only
            self._markers_publisher = self.create_publisher(MarkerArray, p["output_topic"] + "/markers", markers_qos)

    def _declare_parameters(self) -> dict:
        values = {}
        for name, (default, description, read_only) in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=description, read_only=read_only)
            # An empty list has no element type: declared as a list of floats, left unset until given.
            initial = Parameter.Type.DOUBLE_ARRAY if default == [] else default
            try:
                value = self.declare_parameter(name, initial, descriptor).value
            except InvalidParameterTypeException as error:
                kind = "list of floats" if default == [] else type(default).__name__
                raise StartupError(f"parameter {name} must be a {kind}: {error}") from error
            values[name] = default if value is None else value
        choices = {"input_type": CONVERTERS, "input_reliability": RELIABILITY}
        for name, allowed in choices.items():
            if values[name] not in allowed:
                raise StartupError(f"parameter {name} must be one of {sorted(allowed)}, not {values[name]!r}")
        if not values["checkpoint"]:
            raise StartupError("parameter checkpoint is required: the path of a model checkpoint (.pt)")
        if values["depth_topic"] and not values["camera_info_topic"]:
            raise StartupError("parameter camera_info_topic is required with depth_topic: the colour camera's "
                               "CameraInfo, e.g. /camera/color/camera_info")
        up = values["up_in_camera"]
        if up and (len(up) != 3 or not np.linalg.norm(up) > 0):
            raise StartupError(f"parameter up_in_camera must be empty or a non-zero [x, y, z], not {list(up)}")
        tolerance, divisor = values["depth_sync_tolerance"], values["depth_divisor"]
        if not tolerance >= 0:
            raise StartupError(f"parameter depth_sync_tolerance must be at least 0, not {tolerance}")
        if not divisor > 0:
            raise StartupError(f"parameter depth_divisor must be positive, not {divisor}")
        return values

    def _load_segmenter(self) -> Segmenter:
        p = self._params

        def unless_default(name):  # -1 means: what the checkpoint says
            return None if p[name] == -1 else p[name]

        try:
            return Segmenter(p["checkpoint"], device=p["device"], precision=p["precision"], threads=p["threads"],
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

    def _on_depth(self, msg) -> None:
        self._stats.count("depth received")
        self._depth_cache.put(msg)

    def _on_camera_info(self, msg) -> None:
        self._camera_info = msg

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

        with_depth = self._depth_cache is not None
        # Looked up before inference too: a slow one lets newer depth images push the match out of the cache.
        depth = self._paired_depth(msg.header) if with_depth else None

        instances = self._segmenter(rgb)
        for stage in ("preprocess", "infer", "postprocess"):
            self._stats.add_time(stage, self._segmenter.last_timings[stage])

        start = time.perf_counter()
        result = to_box_masks(instances, msg.header, rgb.shape[0], rgb.shape[1])
        publish_time = time.perf_counter() - start
        if with_depth:
            if depth is None:  # a depth image later than its colour one has had the inference time, and a bit more
                depth = self._paired_depth(msg.header, self._params["depth_sync_tolerance"] + DEPTH_LATE_WAIT)
            start = time.perf_counter()
            poses = self._add_poses(result, instances, depth)
            self._stats.add_time("poses", time.perf_counter() - start)

        start = time.perf_counter()
        self._publisher.publish(result)
        self._stats.add_time("publish", publish_time + time.perf_counter() - start)
        self._stats.count("published")
        age = self.get_clock().now() - Time.from_msg(msg.header.stamp)
        self._stats.add_time("age", age.nanoseconds * 1e-9)

        # Drawing costs time: only for an actual viewer.
        if self._debug_publisher is not None and self._debug_publisher.get_subscription_count() > 0:
            overlay = draw_overlay(rgb, result)
            self._debug_publisher.publish(Image(header=msg.header, **rgb_to_imgmsg_fields(overlay)))
        if with_depth:
            self._publish_pose_views(result, poses)

    def _paired_depth(self, header, wait: float = 0.0):
        """The cached depth image closest to header's stamp within depth_sync_tolerance (waiting up to wait s
        for one), or None."""
        tolerance = round(self._params["depth_sync_tolerance"] * 1e9)
        return self._depth_cache.closest(stamp_ns(header), tolerance, wait)

    def _add_poses(self, result: BoxMasks, instances, depth) -> list[CartonPose]:
        """Fills result's pose fields from depth (None: no match); the poses, or [] when the frame gets none."""
        height, width = result.height, result.width
        # Each problem logs on its own line: throttling is per call site, so one cannot hide another.
        if depth is None:
            self._count_no_poses(result, "no depth match")
            self.get_logger().warning(f"frame published without poses: no depth image within "
                                      f"{self._params['depth_sync_tolerance']} s of the colour image's stamp",
                                      throttle_duration_sec=BAD_FRAME_LOG_PERIOD)
            return []
        info = self._camera_info
        if info is None or (info.width, info.height) != (width, height) or not (info.k[0] > 0 and info.k[4] > 0):
            self._count_no_poses(result, "no camera info")
            self.get_logger().warning(
                "frame published without poses: " + (
                    f"no CameraInfo yet on {self._params['camera_info_topic']}" if info is None else
                    f"CameraInfo is {info.width}x{info.height} with fx {info.k[0]}, fy {info.k[4]} but the colour "
                    f"image is {width}x{height}: it must be the colour camera's, calibrated"),
                throttle_duration_sec=BAD_FRAME_LOG_PERIOD)
            return []
        try:
            depth_m = depth_to_metres(depth_image_to_array(depth), depth.encoding, (height, width),
                                      self._params["depth_divisor"])
        except ValueError as error:
            self._count_no_poses(result, "bad depth")
            self.get_logger().error(f"frame published without poses: {error}",
                                    throttle_duration_sec=BAD_FRAME_LOG_PERIOD)
            return []
        poses = estimate_poses(instances, depth_m, Intrinsics.from_k(info.k), up=self._up)
        add_poses(result, poses, pick_order(instances, poses, (height, width), up=self._up))
        for pose in poses:
            self._stats.count(f"pose {pose.status.name}")
        return poses

    def _count_no_poses(self, result: BoxMasks, reason: str) -> None:
        self._stats.count(reason)
        for _ in result.boxes:
            self._stats.count(f"pose {PoseStatus.NONE.name}")

    def _publish_pose_views(self, result: BoxMasks, poses: list[CartonPose]) -> None:
        """The OK poses as a PoseArray and as RViz markers, in pick order, each only for an actual subscriber."""
        picks = sorted((box for box in result.boxes if box.pose_status == PoseStatus.OK), key=lambda b: b.pick_rank)
        if self._poses_publisher.get_subscription_count() > 0:
            self._poses_publisher.publish(PoseArray(header=result.header, poses=[box.pose for box in picks]))
        if self._markers_publisher is not None and self._markers_publisher.get_subscription_count() > 0:
            self._markers_publisher.publish(pick_markers(result.header, picks, poses))

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
        with_depth = self._depth_cache is not None
        if with_depth:
            values["depth images received"] = str(totals["depth received"])
            values.update({key: str(totals[event]) for event, key in NO_POSE_REASONS.items()})
            # Cartons by pose status, e.g. "poses SPARSE_DEPTH": why cartons get no pick.
            values.update({f"poses {status.name}": str(totals[f"pose {status.name}"]) for status in PoseStatus})
        for stage in (*STAGES, "age"):
            if stage != "poses" or with_depth:
                values[f"{stage} mean (ms)"] = milliseconds(times[stage], np.mean)
                values[f"{stage} max (ms)"] = milliseconds(times[stage], max)

        without_poses = [event for event in NO_POSE_REASONS if counts[event]]
        if counts["failed"]:
            level, message = DiagnosticStatus.ERROR, "segmentation failing"
        elif counts["bad"]:
            level, message = DiagnosticStatus.WARN, "bad input images"
        elif without_poses:
            level, message = DiagnosticStatus.WARN, "frames without poses: " + ", ".join(without_poses)
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
