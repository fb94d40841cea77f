"""Pinhole intrinsics from a sensor_msgs/CameraInfo, read as image_geometry's PinholeCameraModel reads them.

No ROS here: camera_model_from_info takes anything with CameraInfo's fields (width, height, distortion_model,
d, k, p). Which matrix applies depends on the images (CAMERA_GEOMETRIES):
- "raw" (image_raw: unrectified): K, with the distortion D undone per pixel (cv2.undistortPoints, the
  model image_geometry's rectifyPoint uses). This is what aligned-depth camera drivers publish:
  realsense-ros' aligned_depth_to_color/camera_info is the colour camera's (plumb_bob; D all zero on
  D415/D435 colour, non-zero on D455/D405; P equal to K) and its images are not rectified; Orbbec's
  depth-to-colour aligned topics likewise carry the colour camera's K and non-zero D, unrectified.
- "rectified" (image_rect: undistorted and rectified by image_proc): P's left 3x3, no distortion.
The rectification rotation R is not applied: poses stay in the image's own optical frame (header.frame_id),
which for a single (not stereo-rectified) camera is the identity anyway.

Intrinsics that cannot be a camera (not finite, uncalibrated zeros, a field of view outside
[MIN_FOV_DEG, MAX_FOV_DEG], the principal point outside the image, an unknown distortion model with
non-zero coefficients, a distortion that undoes some pixel to no ray within that field of view) raise
CameraInfoError naming the problem: a pose computed from them would be anywhere (fx = fy = 1e-30 put cartons at
x = -1.6e32 m).
"""

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

CAMERA_GEOMETRIES = ("raw", "rectified")
MIN_FOV_DEG, MAX_FOV_DEG = 1.0, 170.0  # per axis: beyond, a pinhole model of the lens makes no sense
# CameraInfo distortion models OpenCV undoes, and how many coefficients each has.
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


class CameraInfoError(ValueError):
    """A CameraInfo whose intrinsics cannot be a camera's."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics, pixel (u, v)'s centre at integer (u, v) as in CameraInfo, plus an optional lens
    distortion (a CameraInfo model name and its coefficients) to undo before the pinhole."""

    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = ""
    distortion: tuple[float, ...] = ()
    width: int = 0  # the image's size: with distortion, its pixels are undistorted once, into a table
    height: int = 0

    @property
    def distorted(self) -> bool:
        return any(self.distortion)

    def normalised(self, u, v) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) with the ray of pixel (u, v) through (x, y, 1): undistorted when the lens distorts."""
        u, v = np.asarray(u), np.asarray(v)
        if not self.distorted:
            return (u - self.cx) / self.fx, (v - self.cy) / self.fy
        whole = u.dtype.kind in "iu" and v.dtype.kind in "iu"
        if whole and u.size and u.min() >= 0 and v.min() >= 0 and u.max() < self.width and v.max() < self.height:
            x, y = _undistorted_grid(self)  # once per camera, not per frame
            return x[v, u], y[v, u]
        x, y = _undistort(self, np.column_stack([u.ravel(), v.ravel()]))
        return x.reshape(u.shape), y.reshape(u.shape)

    def normalised_grid(self, x: int, y: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """normalised() of the pixels of an image window, as float32 arrays that broadcast to (height, width):
        a row and a column without distortion, whole (height, width) arrays with it."""
        if not self.distorted:
            return (((np.arange(x, x + width) - self.cx) / self.fx).astype(np.float32)[None, :],
                    ((np.arange(y, y + height) - self.cy) / self.fy).astype(np.float32)[:, None])
        v, u = np.mgrid[y:y + height, x:x + width]
        return tuple(axis.astype(np.float32) for axis in self.normalised(u, v))


def camera_model_from_info(info, geometry: str = "raw") -> Intrinsics:
    """The intrinsics of a CameraInfo (duck-typed) for images that are `geometry` (see CAMERA_GEOMETRIES)."""
    if geometry not in CAMERA_GEOMETRIES:
        raise ValueError(f"camera geometry must be one of {list(CAMERA_GEOMETRIES)}, not {geometry!r}")
    width, height = int(info.width), int(info.height)
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"image size {width}x{height} is empty")
    if geometry == "rectified":
        matrix, name = np.asarray(info.p, dtype=np.float64), "P"
        fx, cx, fy, cy = matrix[0], matrix[2], matrix[5], matrix[6]
        model, coefficients = "", ()
    else:
        matrix, name = np.asarray(info.k, dtype=np.float64), "K"
        fx, cx, fy, cy = matrix[0], matrix[2], matrix[4], matrix[5]
        model, coefficients = str(info.distortion_model), tuple(float(c) for c in info.d)
    if not np.isfinite(matrix).all() or not np.isfinite(coefficients).all():
        raise CameraInfoError(f"{name} or D holds a value that is not finite: {name} {list(matrix)}, "
                              f"D {list(coefficients)}")
    if not matrix.any():
        raise CameraInfoError(f"{name} is all zeros: the camera is not calibrated")
    for axis, focal, size in (("fx", fx, width), ("fy", fy, height)):
        low, high = (size / 2 / math.tan(math.radians(fov) / 2) for fov in (MAX_FOV_DEG, MIN_FOV_DEG))
        if not low <= focal <= high:
            raise CameraInfoError(f"{name}'s {axis} {focal:g} is no camera's for {size} pixels: a field of view "
                                  f"of {MIN_FOV_DEG:g}-{MAX_FOV_DEG:g} degrees needs {low:.3g} to {high:.3g}")
    if not (0 <= cx <= width and 0 <= cy <= height):
        raise CameraInfoError(f"{name}'s principal point ({cx:g}, {cy:g}) lies outside the {width}x{height} image")
    if any(coefficients):
        expected = DISTORTION_MODELS.get(model)
        if expected is None:
            raise CameraInfoError(f"distortion model {model!r} is not one of {sorted(DISTORTION_MODELS)}")
        if len(coefficients) < expected:
            raise CameraInfoError(f"{model} distortion needs {expected} coefficients, D has {len(coefficients)}")
        coefficients = coefficients[:expected]
    distorted = any(coefficients)
    intrinsics = Intrinsics(float(fx), float(fy), float(cx), float(cy), model if distorted else "",
                            coefficients if distorted else (), width, height)
    if distorted and not _undistorts_to_rays(intrinsics):
        raise CameraInfoError(f"{model} distortion D {list(coefficients)} is no lens's: undone, it takes some of the "
                              f"{width}x{height} pixels to no ray (not finite, or beyond a {MAX_FOV_DEG:g}-degree "
                              "field of view)")
    return intrinsics


@functools.lru_cache(maxsize=16)  # checked once per camera, on the table its poses use anyway
def _undistorts_to_rays(intrinsics: Intrinsics) -> bool:
    """Whether every pixel undistorts to a finite ray within MAX_FOV_DEG: OpenCV's iterative undistortion of
    coefficients no lens has gives NaN, inf or rays far outside the image (they once made estimate_poses' planes
    non-finite: LinAlgError, the frame's poses lost)."""
    limit = math.tan(math.radians(MAX_FOV_DEG) / 2)
    return all(np.isfinite(axis).all() and np.abs(axis).max() <= limit for axis in _undistorted_grid(intrinsics))


def _undistort(intrinsics: Intrinsics, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (x, y) of distorted (N, 2) pixel positions."""
    camera = np.array([[intrinsics.fx, 0, intrinsics.cx], [0, intrinsics.fy, intrinsics.cy], [0, 0, 1]])
    coefficients = np.array(intrinsics.distortion)
    points = pixels.astype(np.float64).reshape(-1, 1, 2)
    if intrinsics.distortion_model == "equidistant":
        undistorted = cv2.fisheye.undistortPoints(points, camera, coefficients)
    else:
        undistorted = cv2.undistortPoints(points, camera, coefficients)
    return undistorted[:, 0, 0], undistorted[:, 0, 1]


@functools.lru_cache(maxsize=16)  # one table per camera and size: a node with several cameras keeps all of them
def _undistorted_grid(intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """(height, width) tables of every whole pixel's normalised x and y."""
    v, u = np.mgrid[:intrinsics.height, :intrinsics.width]
    x, y = _undistort(intrinsics, np.column_stack([u.ravel(), v.ravel()]))
    return x.reshape(u.shape), y.reshape(u.shape)
