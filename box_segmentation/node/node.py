"""segment_node: a lifecycle node, camera images in, carton instance masks out on box_masks.

Lifecycle (rclpy.lifecycle, as lifecycle managers such as Nav2's drive it):
  configure   read and validate the parameters, load the model, one warm-up inference;
  activate    subscribe to the cameras, enable the publishers, start the worker;
  deactivate  stop processing (nothing is published), keep the model;
  cleanup     free the model and its CUDA memory;
  shutdown    from any state.
With autostart (the default) the node configures and activates itself at start.

Per camera (the `cameras` parameter; one unnamed camera by default) the subscription callbacks only drop the
message into that camera's slot of a mailbox; a worker thread takes every waiting frame, one per camera,
infers them in one batch and publishes each camera's result on its own topics. A frame still waiting when a
newer one of its camera arrives is dropped (and counted), so results always describe the newest images and no
queue builds up when inference is slower than the cameras.

~/segment (srv/Segment.srv) answers with the result of the first frame of the camera stamped after the request
arrived, or of an image given in the request. With continuous false, only such frames are segmented. A call
waits for its frame on a small node of its own (<name>_requests, spun in its own thread), so that the node's
single-threaded executor goes on taking frames meanwhile (see RequestService).

With use_depth, each frame is paired by stamp with an aligned depth image and every carton gets a pick pose and
rank (box_segmentation.pick_pose), in the camera optical frame of the image's header: there is no TF here.

Run: ros2 run box_segmentation segment_node --ros-args -p checkpoint:=/path/model.pt -r image:=/camera/image_raw
"""

import gc
import signal
import sys
import threading
import time

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from box_segmentation.depth_filter import TemporalDepthAverage
from box_segmentation.image_conversion import (
    ImageConversionError,
    compressed_to_rgb,
    imgmsg_to_rgb,
    rgb_to_imgmsg_fields,
)
from box_segmentation.messages import stamp_ns, to_box_masks
from box_segmentation.msg import BoxMasks
from box_segmentation.node.configuration import (
    PARAMETERS,
    ConfigurationError,
    camera_names,
    load_segmenter,
    topic,
    validated,
)
from box_segmentation.node.diagnostics import Statistics, camera_status
from box_segmentation.node.frame_sync import DepthCache, Frame, LatestFrames, PendingRequests, Request
from box_segmentation.node.poses import NoPoses, averaged_depth, fill_poses
from box_segmentation.node.visualization import draw_overlay, pick_markers
from box_segmentation.pick_pose import PoseStatus
from box_segmentation.registration import RegistrationCheck
from box_segmentation.srv import Segment

NODE_NAME = "segment_node"
RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
CONVERTERS = {"raw": (Image, "image", imgmsg_to_rgb), "compressed": (CompressedImage, "image/compressed",
                                                                      compressed_to_rgb)}
DEPTH_CACHE_SIZE = 10  # depth images kept for pairing: a third of a second at 30 Hz
REGISTRATION_EVERY = 5  # frames with depth between colour-depth registration checks
DEPTH_LATE_WAIT = 0.005  # seconds, beyond the tolerance, to wait after inference for a late depth image
WARM_UP_SIZE = (480, 640)  # the first inference allocates and tunes: done at configure, not on the first frame
DIAGNOSTICS_PERIOD = 1.0  # seconds
BAD_FRAME_LOG_PERIOD = 5.0  # seconds between warnings of one kind, so a broken camera cannot flood the log
LATEST = dict(history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.VOLATILE)


class Camera:
    """One camera's topics, depth cache and counts."""

    def __init__(self, node: "SegmentNode", name: str, params: dict):
        self.name, self.stats, self.subscriptions = name, Statistics(), []
        self.label = f"camera {name}: " if name else ""  # log prefix
        reliable = dict(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, **reliable)
        self.results = node.create_lifecycle_publisher(BoxMasks, topic(name, "box_masks"), output_qos)
        self.debug_images = self.poses = self.markers = None
        if params["publish_debug_image"]:  # a viewer wants the latest only
            self.debug_images = node.create_lifecycle_publisher(Image, topic(name, "box_masks/debug_image"),
                                                                QoSProfile(**LATEST | reliable))
        self.depth_cache, self.camera_info = None, None
        if params["use_depth"]:
            self.depth_cache = DepthCache(DEPTH_CACHE_SIZE)
            self.registration = RegistrationCheck(every=REGISTRATION_EVERY)
            frames = params["depth_average_frames"]
            self.depth_average = TemporalDepthAverage(frames) if frames > 1 else None
            self.poses = node.create_lifecycle_publisher(PoseArray, topic(name, "box_masks/poses"), output_qos)
            if params["publish_markers"]:
                self.markers = node.create_lifecycle_publisher(MarkerArray, topic(name, "box_masks/markers"),
                                                               QoSProfile(**LATEST | reliable))

    def subscribe(self, node: "SegmentNode", message_type, name: str, callback, qos: QoSProfile) -> None:
        """A subscription to this camera's input name, calling callback(self, msg)."""
        self.subscriptions.append(node.create_subscription(message_type, topic(self.name, name),
                                                           lambda msg: callback(self, msg), qos))

    def publishers(self) -> list:
        return [p for p in (self.results, self.debug_images, self.poses, self.markers) if p is not None]


class SegmentNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, description) in PARAMETERS.items():
            # Dynamically typed: a wrong type is reported by configure in one line, not as a construction error.
            descriptor = ParameterDescriptor(description=description, dynamic_typing=True)
            self.declare_parameter(name, None if default == [] else default, descriptor)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._params = self._segmenter = self._mailbox = self._worker = self._diagnostics_timer = None
        self._cameras: dict[str, Camera] = {}
        self._requests = PendingRequests()
        self._active = False
        self._last_logged = {}
        self._request_service = RequestService(self, self._on_segment)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

    @property
    def autostart(self) -> bool:
        return self.get_parameter("autostart").value is not False

    # Lifecycle transitions

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            params = validated({name: self.get_parameter(name).value for name in PARAMETERS})
            segmenter = load_segmenter(params)
            try:
                segmenter(np.full((*WARM_UP_SIZE, 3), 127, np.uint8))
            except RuntimeError as error:  # e.g. CUDA out of memory
                raise ConfigurationError(f"warm-up inference failed: {str(error).splitlines()[0]}") from error
        except ConfigurationError as error:
            # One line; the node stays unconfigured (main() exits with it when autostarting).
            (self.get_logger().fatal if self.autostart else self.get_logger().error)(str(error))
            return TransitionCallbackReturn.FAILURE
        for warning in segmenter.warnings:
            self.get_logger().warning(warning)
        self._params, self._segmenter = params, segmenter
        self._cameras = {name: Camera(self, name, params) for name in camera_names(params)}
        self._last_report = time.monotonic()
        self._diagnostics_timer = self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics)
        self.get_logger().info(
            f"configured: {segmenter.config.arch} for {list(segmenter.classes)} on {segmenter.device}; "
            f"cameras {[name or '(unnamed)' for name in self._cameras]}, {params['input_type']} input "
            f"({params['input_reliability']}), {'continuous' if params['continuous'] else 'on request only'}"
            + (", with depth" if params["use_depth"] else ""))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        p = self._params
        message_type, image_topic, _ = CONVERTERS[p["input_type"]]
        # Depth 1: only the newest frame matters; older ones would only be dropped later.
        input_qos = QoSProfile(**LATEST, reliability=RELIABILITY[p["input_reliability"]])
        # A few depth images of slack: the cache, not the middleware, decides which ones are kept.
        depth_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=input_qos.reliability,
                               durability=DurabilityPolicy.VOLATILE)
        self._mailbox = LatestFrames()
        for camera in self._cameras.values():
            camera.subscribe(self, message_type, image_topic, self._on_image, input_qos)
            if camera.depth_cache is not None:
                camera.subscribe(self, Image, "depth", self._on_depth, depth_qos)
                camera.subscribe(self, CameraInfo, "camera_info", self._on_camera_info, input_qos)
        self._worker = threading.Thread(target=self._work, name="segment_worker", daemon=True)
        self._worker.start()
        self._active = True
        inputs = ", ".join(sub.topic_name for camera in self._cameras.values() for sub in camera.subscriptions)
        outputs = ", ".join(camera.results.topic_name for camera in self._cameras.values())
        self.get_logger().info(f"active: reading {inputs}; masks on {outputs}")
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._stop_processing()
        self.get_logger().info("inactive: not processing, model kept")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("unconfigured: model freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured, ready to configure again

    def _stop_processing(self) -> None:
        """Deactivation: no more frames in, the worker finishes its batch and ends, waiting requests fail."""
        self._active = False
        for camera in self._cameras.values():
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.subscriptions = []
        self._requests.fail_all("segment_node was deactivated")
        if self._worker is not None:
            self._mailbox.close()
            self._worker.join(timeout=10.0)
            self._worker = None

    def _release(self) -> None:
        """Cleanup: the publishers and the model, its CUDA memory included."""
        for camera in self._cameras.values():
            for publisher in camera.publishers():
                self.destroy_lifecycle_publisher(publisher)
        self._cameras = {}
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        if self._segmenter is not None:
            self._segmenter = None
            gc.collect()  # the model's tensors go with the last reference
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._params = None

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        if self._params is None:
            return SetParametersResult(successful=True)
        return SetParametersResult(successful=False, reason="parameters are read at configure: clean the node up, "
                                                            "set them, and configure it again")

    # Inputs

    def _on_image(self, camera: Camera, msg) -> None:
        camera.stats.count("received")
        requests = self._requests.claim(camera.name, stamp_ns(msg.header))
        if not requests and not self._params["continuous"]:
            return
        if self._mailbox.put(camera.name, Frame(camera.name, msg, requests)):
            camera.stats.count("dropped")

    def _on_depth(self, camera: Camera, msg) -> None:
        camera.stats.count("depth received")
        if camera.depth_average is not None:  # every depth image, whether a colour frame pairs with it or not
            msg = averaged_depth(camera.depth_average, msg, self._params["depth_divisor"])
        camera.depth_cache.put(msg)

    def _on_camera_info(self, camera: Camera, msg) -> None:
        camera.camera_info = msg  # the latest: intrinsics rarely change

    def _on_segment(self, request, response):
        camera = request.camera
        if not self._active:
            response.message = "segment_node is not active"
        elif camera not in self._cameras:
            response.message = f"unknown camera {camera!r}: this node has {list(self._cameras)}"
        if response.message:
            return response
        timeout = request.timeout or self._params["request_timeout"]
        pending = Request(camera, after=self.get_clock().now().nanoseconds)
        if request.image.width and request.image.height:
            self._mailbox.put(pending, Frame(camera, request.image, [pending], from_camera=False))
        else:
            self._requests.add(pending)
        if not pending.wait(timeout):
            self._requests.withdraw(pending)
            pending.fail(f"no result within {timeout} s: no frame on "
                         f"{self.resolve_topic_name(topic(camera, CONVERTERS[self._params['input_type']][1]))} "
                         f"stamped after the request")
        response.success = pending.result is not None
        if response.success:
            response.result = pending.result
        else:
            response.message = pending.reason
        self._cameras[camera].stats.count("request answered" if response.success else "request failed")
        return response

    # The worker

    def _work(self) -> None:
        while (frames := self._mailbox.take()) is not None:
            try:
                self._process(frames)
            except Exception as error:  # keep serving: one failed batch must not stop the node
                if not self.context.ok():
                    return  # Ctrl-C while a batch was in hand: its results have nowhere to go
                for frame in frames:
                    self._cameras[frame.camera].stats.count("failed")
                    for request in frame.requests:
                        request.fail(f"segmentation failed: {error!r}")
                self._log("failed", self.get_logger().error, f"segmentation failed: {error!r}")

    def _process(self, frames: list[Frame]) -> None:
        inputs = []
        for frame in frames:
            camera = self._cameras[frame.camera]
            start = time.perf_counter()
            convert = CONVERTERS[self._params["input_type"]][2] if frame.from_camera else imgmsg_to_rgb
            try:
                rgb = convert(frame.msg)
            except ImageConversionError as error:
                camera.stats.count("bad")
                self._log(("bad", camera.name), self.get_logger().warning,
                          f"{camera.label}skipping bad image (frame_id {frame.msg.header.frame_id!r}): {error}")
                for request in frame.requests:
                    request.fail(f"bad image: {error}")
                continue
            camera.stats.add_time("convert", time.perf_counter() - start)
            # Looked up before inference too: a slow one lets newer depth images push the match out of the cache.
            depth = self._paired_depth(camera, frame.msg.header) if camera.depth_cache is not None else None
            inputs.append((frame, rgb, depth))
        if not inputs:
            return

        batch = self._segmenter.segment_batch([rgb for _, rgb, _ in inputs])
        for (frame, rgb, depth), instances in zip(inputs, batch, strict=True):
            camera = self._cameras[frame.camera]
            for stage in ("preprocess", "infer", "postprocess"):
                camera.stats.add_time(stage, self._segmenter.last_timings[stage])
            if len(inputs) > 1:
                camera.stats.count("batched")
            self._publish(camera, frame, rgb, depth, instances)

    def _paired_depth(self, camera: Camera, header, wait: float = 0.0):
        """The cached depth image closest to header's stamp within depth_sync_tolerance (waiting up to wait s for
        one while depth images arrive), or None."""
        tolerance = round(self._params["depth_sync_tolerance"] * 1e9)
        return camera.depth_cache.closest(stamp_ns(header), tolerance, wait)

    def _publish(self, camera: Camera, frame: Frame, rgb: np.ndarray, depth, instances) -> None:
        start = time.perf_counter()
        result = to_box_masks(instances, frame.msg.header, rgb.shape[0], rgb.shape[1])
        publish_time = time.perf_counter() - start
        poses = []
        if camera.depth_cache is not None:
            if depth is None:  # a depth image later than its colour one has had the inference time, and a bit more
                depth = self._paired_depth(camera, frame.msg.header,
                                           self._params["depth_sync_tolerance"] + DEPTH_LATE_WAIT)
            start = time.perf_counter()
            poses = self._add_poses(camera, result, instances, depth)
            camera.stats.add_time("poses", time.perf_counter() - start)
        for request in frame.requests:
            request.answer(result)
        if not frame.from_camera:
            return  # an image given with a request: the answer is the reply, not the camera's topics

        start = time.perf_counter()
        camera.results.publish(result)
        camera.stats.add_time("publish", publish_time + time.perf_counter() - start)
        camera.stats.count("published")
        age = self.get_clock().now() - Time.from_msg(frame.msg.header.stamp)
        camera.stats.add_time("age", age.nanoseconds * 1e-9)
        # Drawing costs time: only for an actual viewer.
        if camera.debug_images is not None and camera.debug_images.get_subscription_count() > 0:
            overlay = draw_overlay(rgb, result)
            camera.debug_images.publish(Image(header=frame.msg.header, **rgb_to_imgmsg_fields(overlay)))
        if camera.depth_cache is not None:
            self._publish_pose_views(camera, result, poses)

    def _add_poses(self, camera: Camera, result: BoxMasks, instances, depth) -> list:
        p = self._params
        try:
            poses = fill_poses(result, instances, depth, camera.camera_info, p, camera.registration)
        except NoPoses as reason:
            camera.stats.count(reason.event)
            camera.stats.count(f"pose {PoseStatus.NONE.name}", len(result.boxes))
            self._log((reason.event, camera.name), self.get_logger().warning,
                      f"{camera.label}frame published without poses: {reason}")
            return []
        for pose in poses:
            camera.stats.count(f"pose {pose.status.name}")
        return poses

    def _publish_pose_views(self, camera: Camera, result: BoxMasks, poses: list) -> None:
        """The OK poses as a PoseArray and as RViz markers, in pick order, each only for an actual subscriber."""
        picks = sorted((box for box in result.boxes if box.pose_status == PoseStatus.OK), key=lambda b: b.pick_rank)
        if camera.poses.get_subscription_count() > 0:
            camera.poses.publish(PoseArray(header=result.header, poses=[box.pose for box in picks]))
        if camera.markers is not None and camera.markers.get_subscription_count() > 0:
            camera.markers.publish(pick_markers(result.header, picks, poses))

    def _log(self, key, log, message: str) -> None:
        """log(message), at most once per BAD_FRAME_LOG_PERIOD for each kind of problem (key)."""
        now = time.monotonic()
        if now - self._last_logged.get(key, -BAD_FRAME_LOG_PERIOD) >= BAD_FRAME_LOG_PERIOD:
            self._last_logged[key] = now
            log(message)

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        elapsed, self._last_report = now - self._last_report, now
        node = self.get_fully_qualified_name().lstrip("/")
        array = DiagnosticArray()
        for camera in self._cameras.values():
            name = f"{node}: segmentation" + (f" ({camera.name})" if camera.name else "")  # diagnostic_aggregator
            with_depth = camera.depth_cache is not None
            status = camera_status(name, str(self._segmenter.device), camera.stats, elapsed, with_depth,
                                   camera.registration.offset() if with_depth else None)
            if not self._active:
                status.message = "inactive"
            array.status.append(status)
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(array)

    def stop(self) -> None:
        """The process ends: stop processing and free everything, whatever the lifecycle state."""
        self._stop_processing()
        self._release()

    def destroy_node(self) -> None:
        self._request_service.close()
        super().destroy_node()


class RequestService:
    """~/segment, served from a node of its own (<name>_requests, no global arguments: a __node remap would rename
    it too) spun by its own executor thread, so that a call can wait for its camera's next frame while the main
    node's single-threaded executor takes that frame. rclpy's MultiThreadedExecutor would serve both in one node,
    but until a pool thread starts a callback it yields it again and again, spinning on the GIL: frames waited a
    median 23-41 ms (up to 1 s) for their callback, against 2 ms on a single-threaded executor (640x480, the
    shipped model, benchmarks/bench_node_latency.py)."""

    def __init__(self, node: SegmentNode, callback):
        self._node = rclpy.create_node(f"{node.get_name()}_requests", namespace=node.get_namespace(),
                                       context=node.context, use_global_arguments=False,
                                       start_parameter_services=False)
        self._node.create_service(Segment, node.resolve_service_name("~/segment"), callback)
        self._executor = SingleThreadedExecutor(context=node.context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, name="segment_requests", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass  # the process is stopping
        except Exception:
            if self._node.context.ok():
                raise
            # A stop signal wakes the executors before it shuts the context down: this one went round again and
            # built its next wait set on the context just shut down (RCLError). A normal stop too, as in main.

    def close(self) -> None:
        self._executor.shutdown()
        self._thread.join()
        self._node.destroy_node()


def stop_on_first_signal() -> None:
    """Makes SIGINT and SIGTERM request one stop, and any later one harmless.

    Ctrl-C under `ros2 launch` arrives twice (the terminal's SIGINT, then launch's own), and a supervisor may
    repeat SIGTERM: a repeat must not interrupt the shutdown with a KeyboardInterrupt (or kill it by SIGTERM's
    default action). Installed before rclpy.init(), whose handlers shut the context down, wake the executor and
    then chain to this one; nothing raises, so no half-done call is cut short.
    """
    def ignore_further_signals(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    signal.signal(signal.SIGINT, ignore_further_signals)
    signal.signal(signal.SIGTERM, ignore_further_signals)


def main(args=None) -> int:
    stop_on_first_signal()
    rclpy.init(args=args)
    # Made before the slow start-up, so that a stop signal during it cannot catch it half-built.
    executor = SingleThreadedExecutor()
    node = None
    try:
        node = SegmentNode()
        executor.add_node(node)
        if node.autostart:
            started = (node.trigger_configure() == TransitionCallbackReturn.SUCCESS
                       and node.trigger_activate() == TransitionCallbackReturn.SUCCESS)
            if not started:  # configure said why, in one line; or a stop signal came during start-up
                return 1 if rclpy.ok() else 0
        executor.spin()
    except ExternalShutdownException:
        pass  # Ctrl-C or SIGTERM: a normal stop
    except Exception:
        if rclpy.ok():
            raise
        # A stop signal shut the context down under an rclpy call in progress: a normal stop too.
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
