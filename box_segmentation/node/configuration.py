"""segment_node's parameters: their defaults, their validation at configure, and the topic names per camera.

No rclpy here: the node reads the parameter values and hands them to validated() and load_segmenter(), which
raise ConfigurationError with one line naming the problem.
"""

import re
import textwrap

import numpy as np

from box_segmentation.camera_model import CAMERA_GEOMETRIES
from box_segmentation.model import CheckpointError
from box_segmentation.segmenter import PRECISIONS, DeviceUnavailableError, Segmenter

# Every parameter: name -> (default, description). They are read at configure: change them while the node is
# unconfigured (or restart it); a set while configured is refused.
PARAMETERS = {
    "checkpoint": ("", "Path of the model checkpoint (.pt) written by training. Required."),
    "device": ("auto", "auto (CUDA if available, else CPU with a warning), cpu, cuda or cuda:N."),
    "precision": ("fp32", "fp32; bf16 (CPUs with AVX512-BF16 or AMX, or CUDA); fp16 (CUDA). What the device "
                          "cannot run falls back to fp32 with a warning."),
    "threads": (0, "torch CPU threads, set once at configure; 0: torch's default (one per physical core)."),
    "score_threshold": (-1.0, "Minimum detection score in [0, 1]; -1: the checkpoint's value."),
    "mask_threshold": (-1.0, "Mask probability above which a pixel is carton, in [0, 1]; -1: the checkpoint's."),
    "max_detections": (-1, "Most instances published per image, highest scores first; -1: the checkpoint's."),
    "cameras": ([], "Camera names, e.g. [left, right]: camera c reads c/image (c/image/compressed), c/depth and "
                    "c/camera_info and publishes on c/box_masks; all share one model and frames waiting from "
                    "several cameras are inferred in one batch. Empty: one camera, topics image ... box_masks."),
    "input_type": ("raw", "raw (sensor_msgs/Image on image) or compressed (sensor_msgs/CompressedImage, jpeg or "
                          "png, on image/compressed)."),
    "input_reliability": ("best_effort", "Input QoS reliability: best_effort (as camera drivers publish) or "
                                         "reliable."),
    "continuous": (True, "true: segment every frame (the newest one when inference is slower than the camera). "
                         "false: only frames asked for with the ~/segment service, so an idle cell spends no GPU."),
    "request_timeout": (2.0, "Seconds a ~/segment request waits for its frame and result unless it says."),
    "publish_debug_image": (True, "Publish an overlay on box_masks/debug_image, drawn only while someone "
                                  "subscribes."),
    "use_depth": (False, "Read a depth sensor_msgs/Image (16UC1, mono16 or 32FC1) registered to the colour image "
                         "pixel for pixel on depth (remap it, e.g. depth:=/camera/aligned_depth_to_color/image_raw) "
                         "and the colour camera's CameraInfo on camera_info: every carton then gets a pick pose "
                         "and rank."),
    "camera_geometry": ("raw", "How the colour (and aligned depth) images relate to camera_info, as "
                               "image_geometry reads it: raw (image_raw: K, undoing the distortion D per pixel; what "
                               "RealSense and Orbbec aligned depth publish) or rectified (image_rect: P)."),
    "depth_sync_tolerance": (0.02, "Seconds: the largest stamp difference between a colour image and the depth "
                                   "image paired with it. A frame with no depth image that close gets no poses."),
    "depth_average_frames": (1, "With depth: each pixel's depth is the mean over this many of the camera's latest "
                                "depth images (those without depth there left out; half of them must have it), "
                                "restarted from the newest where the depth jumps by more than 4 depth steps (a "
                                "carton picked). For a pallet that holds still between picks: 4 (0.13 s at 30 Hz) "
                                "keeps 2.5 m cartons within 3 degrees where one frame's noise does not. 1: none."),
    "depth_divisor": (1000.0, "16UC1 and mono16 depth units per metre: 1000 = millimetres, the ROS convention. "
                              "32FC1 depth is in metres."),
    "up_in_camera": ([], "Gravity-up as a fixed [x, y, z] in the camera optical frame (x right, y down, z forward), "
                         "e.g. [0.0, -1.0, 0.0] for a level camera; chooses the top faces and the layers. Empty: "
                         "unknown, the top face is the one most squarely facing the camera (right for a camera "
                         "above the stack looking down)."),
    "publish_markers": (True, "With depth: RViz markers on box_masks/markers (a box and the pick rank per carton "
                              "with a pose), built only while someone subscribes."),
    "autostart": (True, "Configure and activate at start, so `ros2 run` and `ros2 launch` just work. false: wait "
                        "for a lifecycle manager's transitions."),
}
CHOICES = {"precision": PRECISIONS, "input_type": ("raw", "compressed"),
           "input_reliability": ("best_effort", "reliable"), "camera_geometry": CAMERA_GEOMETRIES}
CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # one token of a ROS name


class ConfigurationError(Exception):
    """A configuration the node cannot run with, in one line."""


def validated(values: dict) -> dict:
    """The parameters as the node uses them: types checked (an int is taken for a float), lists as lists (up_in_camera
    an array, None when empty), choices and ranges checked. values: name -> value, None for a parameter left unset."""
    params = {}
    for name, (default, _) in PARAMETERS.items():
        value = values.get(name)
        if value is None:
            value = default
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, list) and not isinstance(value, str | bytes | bool | int | float):
            value = list(value)  # rclpy gives arrays as array.array
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigurationError(f"parameter {name} must be {_type_name(default)}, not {value!r}")
        params[name] = value
    for name, allowed in CHOICES.items():
        if params[name] not in allowed:
            raise ConfigurationError(f"parameter {name} must be one of {list(allowed)}, not {params[name]!r}")
    if not params["checkpoint"]:
        raise ConfigurationError("parameter checkpoint is required: the path of a model checkpoint (.pt)")
    cameras = params["cameras"]
    bad = [name for name in cameras if not isinstance(name, str) or not CAMERA_NAME.fullmatch(name)]
    if bad or len(set(cameras)) != len(cameras):
        raise ConfigurationError(f"parameter cameras must be distinct names of letters, digits and _ (a letter "
                                 f"first), not {cameras}")
    up = params["up_in_camera"]
    try:
        up = [float(x) for x in up]
    except (TypeError, ValueError):
        up = None
    if up is None or (up and (len(up) != 3 or not np.linalg.norm(up) > 0)):
        raise ConfigurationError(f"parameter up_in_camera must be empty or a non-zero [x, y, z], not "
                                 f"{params['up_in_camera']}")
    params["up_in_camera"] = np.array(up) if up else None  # as pick_pose takes it
    positive = {"depth_divisor": params["depth_divisor"], "request_timeout": params["request_timeout"]}
    for name, value in positive.items():
        if not value > 0:
            raise ConfigurationError(f"parameter {name} must be positive, not {value}")
    if params["depth_average_frames"] < 1:
        raise ConfigurationError(f"parameter depth_average_frames must be at least 1, not "
                                 f"{params['depth_average_frames']}")
    if not params["depth_sync_tolerance"] >= 0:
        raise ConfigurationError(f"parameter depth_sync_tolerance must be at least 0, not "
                                 f"{params['depth_sync_tolerance']}")
    return params


def load_segmenter(params: dict) -> Segmenter:
    def unless_default(name):  # -1 means: what the checkpoint says
        return None if params[name] == -1 else params[name]

    try:
        return Segmenter(params["checkpoint"], device=params["device"], precision=params["precision"],
                         threads=params["threads"],
                         score_threshold=unless_default("score_threshold"),
                         mask_threshold=unless_default("mask_threshold"),
                         max_detections=unless_default("max_detections"))
    except (CheckpointError, DeviceUnavailableError, ValueError) as error:
        # One line, however torch words it; a list of hundreds of mismatched weights helps nobody.
        raise ConfigurationError(textwrap.shorten(str(error), width=500, placeholder=" [...]")) from error


def camera_names(params: dict) -> list[str]:
    """The cameras' names; "" for the one unnamed camera."""
    return params["cameras"] or [""]


def topic(camera: str, name: str) -> str:
    """A camera's relative topic: image -> image for the unnamed camera, left/image for camera left."""
    return f"{camera}/{name}" if camera else name


def _type_name(default) -> str:
    if isinstance(default, list):
        return "a list"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[type(default)]
