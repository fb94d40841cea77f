"""Test harness for segment_node: the node in its own process, and a probe node that talks to it."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from box_segmentation.image_conversion import rgb_to_imgmsg_fields
from box_segmentation.msg import BoxMasks

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "segment.yaml"
IMAGE_TOPIC = "/camera/color/image_raw"


class NodeProcess:
    """`python -m box_segmentation.node` with the shipped config, its output collected as it comes."""

    def __init__(self, *params: str, ros_args: tuple[str, ...] = ()):
        command = [sys.executable, "-m", "box_segmentation.node", "--ros-args", "--params-file", str(CONFIG),
                   *ros_args]
        for param in params:
            command += ["-p", param]
        # One torch thread: two threads fighting other processes for 2 shared cores run 3-10x slower.
        # Python's fault handler: a node that hangs is aborted by wait() and shows every thread's stack.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
        self.process = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self._lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)  # the fault handler prints where it hangs
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._reader.join(timeout=5)
            raise AssertionError(f"segment_node still running after {timeout} s:\n{self.output}") from None
        self._reader.join(timeout=5)
        return code

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None, f"segment_node exited:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} from segment_node within {timeout} s:\n{self.output}"
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait(timeout)


def stamp_seconds(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def carton_image(seed: int, height: int = 120, width: int = 160) -> np.ndarray:
    """A grey floor with a few brown boxes on it: something carton-like for any model."""
    rng = np.random.default_rng(seed)
    rgb = np.full((height, width, 3), 110, np.uint8)
    for _ in range(3):
        x, y = rng.integers(0, width - 40), rng.integers(0, height - 30)
        rgb[y:y + rng.integers(20, 40), x:x + rng.integers(30, 50)] = rng.integers((140, 95, 50), (190, 135, 85))
    return (rgb + rng.integers(0, 12, rgb.shape)).astype(np.uint8)


class Probe:
    """A test-side node, spun in a background thread: publishes images, collects what segment_node sends."""

    def __init__(self, context):
        self.node = rclpy.create_node("segment_node_probe", context=context)
        camera_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.images = self.node.create_publisher(Image, IMAGE_TOPIC, camera_qos)
        self.compressed = self.node.create_publisher(CompressedImage, IMAGE_TOPIC + "/compressed", camera_qos)
        self.results = {}  # topic -> [(receive time, BoxMasks)]
        self._clients = {}
        self.diagnostics = []  # [(receive time, DiagnosticArray)]
        self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                      lambda msg: self.diagnostics.append((time.time(), msg)),
                                      QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def publisher(self, topic: str, message_type=Image, reliability=ReliabilityPolicy.BEST_EFFORT):
        """A publisher, best effort by default as camera drivers publish."""
        return self.node.create_publisher(message_type, topic, QoSProfile(depth=1, reliability=reliability))

    def call(self, service_type, name: str, request, timeout: float = 30.0):
        """The response of service name to request, from the probe's own process."""
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(service_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"no service {name}"
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            assert time.monotonic() < deadline, f"no response from {name} within {timeout} s"
            time.sleep(0.01)
        return future.result()

    def change_state(self, node: str, transition: int) -> bool:
        """Drives a lifecycle node through transition (lifecycle_msgs/Transition.TRANSITION_*) as a manager does."""
        return self.call(ChangeState, f"{node}/change_state", ChangeState.Request(
            transition=Transition(id=transition))).success

    def state(self, node: str) -> str:
        return self.call(GetState, f"{node}/get_state", GetState.Request()).current_state.label

    def listen(self, topic: str = "/box_masks", message_type=BoxMasks) -> list:
        """The list that collects (receive time, message) from topic."""
        if topic not in self.results:
            self.results[topic] = received = []
            self.node.create_subscription(message_type, topic, lambda msg: received.append((time.time(), msg)),
                                          QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        return self.results[topic]

    def image(self, rgb: np.ndarray, frame_id: str = "camera", encoding: str = "rgb8") -> Image:
        """An Image of rgb stamped now."""
        msg = Image(**rgb_to_imgmsg_fields(rgb, encoding))
        msg.header.frame_id = frame_id
        msg.header.stamp = self.node.get_clock().now().to_msg()
        return msg

    def compressed_image(self, rgb: np.ndarray, frame_id: str = "camera") -> CompressedImage:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
        msg.header.frame_id = frame_id
        msg.header.stamp = self.node.get_clock().now().to_msg()
        return msg

    def request(self, make_msg, publisher=None, topic: str = "/box_masks", attempts: int = 10,
                timeout: float = 5.0):
        """Publishes make_msg() (fresh stamp each attempt) until a result with its header comes back."""
        publisher = publisher or self.images
        received = self.listen(topic)
        for _ in range(attempts):
            msg = make_msg()
            publisher.publish(msg)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for _, result in list(received):
                    if result.header == msg.header:
                        return msg, result
                time.sleep(0.02)
        raise AssertionError(f"no result on {topic} after {attempts} attempts")

    def status(self, name: str, after: float = 0.0, timeout: float = 10.0, until=lambda values: True) -> dict:
        """Key-values of the first status `name` received after time `after` for which until(values) holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for received, array in list(self.diagnostics):
                for status in array.status:
                    if received > after and status.name == name:
                        values = {kv.key: kv.value for kv in status.values}
                        if until(values):
                            return values
            time.sleep(0.05)
        raise AssertionError(f"no fitting diagnostics status {name!r} within {timeout} s")

    def close(self):
        self._executor.shutdown()
        self.node.destroy_node()


DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"
CAMERA_INFO_TOPIC = "/camera/color/camera_info"


def depth_image(depth: np.ndarray, header) -> Image:
    """A depth Image: 16UC1 from uint16, 32FC1 from float32."""
    encoding = {np.dtype(np.uint16): "16UC1", np.dtype(np.float32): "32FC1"}[depth.dtype]
    height, width = depth.shape
    return Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                 step=width * depth.itemsize, data=np.ascontiguousarray(depth).tobytes())


def camera_info(camera, header) -> CameraInfo:
    """CameraInfo of a pinhole camera with fx, fy, cx, cy, width and height (e.g. a synthetic scene's)."""
    k = [float(camera.fx), 0.0, float(camera.cx), 0.0, float(camera.fy), float(camera.cy), 0.0, 0.0, 1.0]
    return CameraInfo(header=header, width=int(camera.width), height=int(camera.height), distortion_model="plumb_bob",
                      d=[0.0] * 5, k=k, r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=k[:3] + [0.0] + k[3:6] + [0.0] + k[6:] + [0.0])
