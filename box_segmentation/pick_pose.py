"""From instance masks and aligned depth to picks: each carton's top-face pose and size, and the order to pick them.

No ROS here. Per frame the node calls:

    intrinsics = camera_model.camera_model_from_info(camera_info, "raw")  # K and D, or "rectified": P
    depth_m = depth_to_metres(depth_image, encoding, (height, width))  # the colour image's size
    poses = estimate_poses(instances, depth_m, intrinsics, up=up_in_camera)
    order = pick_order(instances, poses, (height, width), up=up_in_camera)
    messages.add_poses(msg, poses, order)

Conventions: the camera optical frame (x right, y down, z forward), metres. Intrinsics put pixel (u, v)'s
centre at integer (u, v), as CameraInfo's K does, so pixel (u, v) with depth Z is the point (x Z, y Z, Z) with
(x, y) = Intrinsics.normalised(u, v): ((u - cx) / fx, (v - cy) / fy) once any lens distortion is undone. Masks
are Instance roi + cropped mask (msg/BoxMask.msg). `up` is gravity-up expressed in the camera frame (the world
z axis, from TF), or None when unknown.

One carton (estimate_poses; steps 2 and 3, and step 4's refit and rectangle, run for all cartons of the frame at
once, in batched arrays):
1. Points: the depth pixels of the mask eroded by erode_px (mask edges mix carton, neighbour and background
   depth), thinned to max_fit_points. Too few of them: POSE_SPARSE_DEPTH.
2. Faces: an SCD-style mask shows a carton's top and up to two sides, so planes are found one after another
   by RANSAC on the points still unexplained (each must hold min_face_fraction of the points); then every
   point goes to its nearest plane in depth (if within the inlier distance) and each plane is refitted by least
   squares on its points. pose_quality is the share of points on some face; below min_quality: POSE_POOR_FIT.
3. The top face: with `up`, the face whose normal is nearest up (POSE_NO_TOP_FACE when even that one is
   more than max_top_tilt_deg off). Without `up`, the face that looks most squarely at the camera: right for
   a camera above the stack looking down, the usual depalletising mount; oblique and side views need `up`.
   Of the faces parallel to that one, the one with the most points: a band of floor or of a lower neighbour
   inside the mask (colour-depth misregistration) is parallel too.
4. Extent: the whole (uneroded) mask's pixels on the top plane (holes in the depth filled from their
   neighbours, cut at the creases with the side planes; near the top's boundary (the mask's edge, a side's
   pixels) only those within half the tolerance, as a side's first pixels past the crease and a side seen
   edge-on are a strip just beyond the plane; spurs under 3 px across opened away), every piece of it but specks: tape
   and dark print leave holes too wide to fill that cut a top into pieces; their pixel rays are cut with the
   top plane refitted on its pixels together with the side faces' pixels, the sides held square to it (a side
   seen obliquely fixes the top's tilt across it better than the top's own noisy points; the creases are cut
   with these square sides): exact positions, free of depth noise. The minimum-area rectangle around them,
   grown by half a pixel's footprint (pixel centres stop short of the face's edges), is the visible top face.
   Its centre is the pick point, its long side the x axis.

A plane holds the points within a tolerance no tighter than the camera's depth step at the carton's distance
(depth_step_at_1m times z²: quantisation alone spreads a plane's points over it), nor than how flat carton tops
are (min_inlier_distance), and otherwise inlier_sigmas times the depth noise measured from the depth itself
(_depth_noise), up to max_inlier_distance: tight on clean depth, so side faces do not creep into the top, loose
on a noisy camera's. The top's extent takes the tolerance its own points' spread calls for, if tighter.
"""

import enum
import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from box_segmentation.camera_model import Intrinsics
from box_segmentation.image_conversion import depth_encoding


class PoseStatus(enum.IntEnum):
    """Same values as BoxMask.msg's POSE_* constants."""

    NONE = 0  # no depth
    OK = 1
    SPARSE_DEPTH = 2
    POOR_FIT = 3
    NO_TOP_FACE = 4


# Depth outside this range (metres) is no camera's measurement but garbage (a broken driver, a bad bag): it counts as
# missing, as 0 and NaN do. It also keeps the float32 geometry finite: 1e-38 m once gave an OK pose of NaNs, 3e38 m
# (points past float32's range) an eigensolver error that lost the whole frame's poses.
DEPTH_RANGE_M = (1e-3, 1e3)


@dataclass(frozen=True)
class PoseParams:
    erode_px: int = 2  # mask erosion before fitting
    min_points: int = 50  # depth pixels a carton needs on its eroded mask...
    min_valid_fraction: float = 0.3  # ...and as a share of the eroded mask
    inlier_sigmas: float = 3.0  # a plane holds the points within this many sigmas of the carton's depth noise...
    noise_lag_px: int = 8  # ...(measured over this many pixels: a stereo camera's noise is correlated)...
    depth_step_at_1m: float = 0.0025  # ...never less than the camera's depth step there, this at 1 m times z²...
    min_inlier_distance: float = 0.005  # ...nor than how flat a carton top is (they bulge and sag), in metres...
    max_inlier_distance: float = 0.04  # ...nor more: depth noisier than that fits poorly, as it should
    fill_px: int = 4  # pixels without depth this close to ones with it take their face
    edge_ring_px: int = 4  # this close to the top's boundary, a top pixel over half the tolerance beyond is a side's
    min_fragment: float = 0.02  # share of the top face's pixels below which a piece of it is a speck
    max_faces: int = 3  # planes looked for per carton: a top and two sides
    min_face_fraction: float = 0.05  # share of a carton's points a plane needs to count as a face
    parallel_deg: float = 10.0  # faces this near parallel to the top candidate compete with it on points
    min_quality: float = 0.7  # share of points on faces below which the fit is poor
    max_top_tilt_deg: float = 30.0  # with `up`: largest angle between up and a top face's normal
    ransac_iterations: int = 60  # hypotheses per face, all cartons' scored at once
    # The point counts below: as accurate as 150, 500 and 1500 over every scene of seeds 0-159, 1.1x faster (README).
    ransac_points: int = 120  # points each RANSAC hypothesis is scored on
    max_fit_points: int = 400  # a carton's points are thinned to this many for fitting...
    max_refit_points: int = 1000  # ...and its top's pixels to this many for the last fit (its sides' likewise)
    seed: int = 0  # RANSAC's random stream: same frame, same poses


@dataclass(frozen=True)
class OrderParams:
    layer_tolerance: float = 0.05  # metres below a layer's highest top that still belong to the layer
    cover_margin: float = 0.02  # metres: a neighbour this much higher covers the carton, this much lower is free
    max_covered_share: float = 0.05  # share of the border on higher neighbours above which a carton is covered
    ring_px: int = 3  # width of the border examined around each mask


@dataclass(frozen=True)
class CartonPose:
    """One carton's top face; position, rotation and sizes only when status is OK."""

    status: PoseStatus
    quality: float = 0.0  # share of the eroded mask's depth points on the fitted faces
    points: int = 0  # depth points on the eroded mask
    position: np.ndarray | None = None  # (3,) pick point: centre of the visible top face, metres
    rotation: np.ndarray | None = None  # (3, 3) columns: x long edge, y = z cross x, z normal toward the camera
    length: float = 0.0  # visible top face extent along x, metres (length >= width)
    width: float = 0.0

    @property
    def normal(self) -> np.ndarray | None:
        return None if self.rotation is None else self.rotation[:, 2]

    @property
    def quaternion(self) -> tuple[float, float, float, float] | None:
        """Orientation as (x, y, z, w), as geometry_msgs/Quaternion orders it."""
        return None if self.rotation is None else quaternion_from_matrix(self.rotation)


def measured_depth(depth) -> np.ndarray:
    """bool: where depth (metres) is within DEPTH_RANGE_M (NaN compares false)."""
    nearest, farthest = (np.float32(bound) for bound in DEPTH_RANGE_M)  # (float64 bounds would upcast the depth)
    return (depth >= nearest) & (depth <= farthest)


def depth_to_metres(depth: np.ndarray, encoding: str, image_size: tuple[int, int],
                    divisor: float = 1000.0) -> np.ndarray:
    """(H, W) float32 metres, NaN where the camera measured nothing.

    encoding: "16UC1" or "mono16" (integer units, divisor of them per metre: 1000 = millimetres, the ROS convention;
    0 = missing) or "32FC1" (metres; 0, NaN and inf = missing; divisor unused); depth outside DEPTH_RANGE_M is
    missing too. image_size is the colour image's (height, width): the depth must be registered to it pixel for
    pixel.
    """
    height, width = image_size
    if depth.ndim != 2 or depth.shape != (height, width):
        size = "x".join(str(n) for n in depth.shape[1::-1] + depth.shape[2:])
        raise ValueError(f"depth image is {size} but the colour image is {width}x{height}: depth must be aligned "
                         "(registered) to the colour camera, e.g. a RealSense's aligned_depth_to_color topic")
    if depth_encoding(encoding) in ("16UC1", "mono16"):  # ImageConversionError, a ValueError, for others
        metres = depth.astype(np.float32) / np.float32(divisor)
    else:  # 32FC1
        metres = depth.astype(np.float32, copy=True)
    metres[~measured_depth(metres)] = np.nan
    return metres


def estimate_poses(instances, depth_m: np.ndarray, intrinsics: Intrinsics, params: PoseParams = PoseParams(),
                   up=None) -> list[CartonPose]:
    """The top-face pose of every instance (anything with .roi and .mask), in the instances' order.

    depth_m: (H, W) float32 metres aligned to the image the masks came from; 0, NaN or outside DEPTH_RANGE_M =
    missing.
    up: gravity-up in the camera frame, or None (see the module docstring for how the top face is chosen).
    """
    rng = np.random.default_rng(params.seed)
    up = None if up is None else _unit(np.asarray(up, dtype=np.float64))
    # Missing depth (NaN) and rays parallel to a plane (division by zero) are expected throughout, and their
    # results (NaN, inf) compare false where it matters, as does whole-window arithmetic overflowing on depth
    # outside DEPTH_RANGE_M: one errstate for the frame, not one per small step.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        frame_rays = None if intrinsics.distorted else intrinsics.normalised_grid(0, 0, *depth_m.shape[::-1])
        fitted = [_fit_points(instance.roi, instance.mask, depth_m, intrinsics, frame_rays, params)
                  for instance in instances]
        fitting = [i for i, fit in enumerate(fitted) if not isinstance(fit, CartonPose)]
        poses = list(fitted)
        windows = {}  # carton index: its _TopWindow
        if fitting:
            fits = [fitted[i] for i in fitting]
            tolerances = np.array([fit.tolerance for fit in fits])
            points, planes, owner = _find_faces([fit.thinned for fit in fits], tolerances, params, rng)
            quality = _counts(owner >= 0, axis=1) / np.array([fit.thinned.shape[1] for fit in fits])
            top, spread = _top_faces(points, planes, owner, up, params)
            # The faces' own spread now measures the noise, free of what quantisation does to _depth_noise: the
            # top's extent takes only what that spread (or the depth step) explains, so a side's first pixels stay
            # off it.
            tolerances = np.minimum(tolerances, np.maximum(
                params.inlier_sigmas * spread, np.maximum([fit.step for fit in fits], params.min_inlier_distance)))
            found = ~np.isnan(planes[..., 0])
            # Python numbers, each carton's from lists: numpy's own scalars would turn the window's float32 and int8
            # arrays they meet into float64 and int64 ones, and a few numpy calls per carton on its three planes
            # cost more than the lists.
            for c, (i, fit, own_found, own_top, own_quality, tolerance) in enumerate(zip(
                    fitting, fits, found.tolist(), top.tolist(), quality.tolist(), tolerances.tolist(), strict=True)):
                if not any(own_found) or own_quality < params.min_quality:
                    poses[i] = CartonPose(PoseStatus.POOR_FIT, own_quality, fit.points)
                elif own_top < 0:
                    poses[i] = CartonPose(PoseStatus.NO_TOP_FACE, own_quality, fit.points)
                else:
                    windows[i] = _top_window(instances[i].roi, instances[i].mask, depth_m, params, fit,
                                             planes[c, found[c]], sum(own_found[:own_top]), tolerance, own_quality)
        # The tops held square to their sides and framed by their rectangles, all cartons at once: each is a few
        # dozen operations on 3x3 matrices, which cost the same for one carton as for fifty.
        squared = [window for window in windows.values() if window.side_fits]
        if squared:
            tops, sides = _square_to_sides([window.top_fit for window in squared],
                                           [window.side_fits for window in squared])
            for window, plane, own_sides in zip(squared, tops, sides, strict=True):
                window.plane = plane
                window.sides[window.seen] = own_sides[:len(window.seen)]
        outlines = {i: _top_outline(window, params) for i, window in windows.items()}
        framed = [i for i, (outline_x, _) in outlines.items() if len(outline_x) >= 3]
        for i in outlines.keys() - framed:  # the creases cut the whole face away: the planes are no box's
            poses[i] = CartonPose(PoseStatus.POOR_FIT, windows[i].quality, fitted[i].points)
        if framed:
            rectangles = _face_rectangles([outlines[i] for i in framed], np.array([windows[i].plane for i in framed]),
                                          intrinsics)
            for i, (position, rotation, length, width) in zip(framed, rectangles, strict=True):
                poses[i] = CartonPose(PoseStatus.OK, windows[i].quality, fitted[i].points, position, rotation, length,
                                      width)
    return poses


def pick_order(instances, poses: list[CartonPose], image_size: tuple[int, int], params: OrderParams = OrderParams(),
               up=None) -> list[int]:
    """Indices into instances, the one to pick first first.

    Cartons with an OK pose come first, sorted by:
    1. layer: heights are pick points along up (given, or the mean normal of the OK top faces); the highest
       carton and every one within layer_tolerance below it form layer 0, the highest of the rest layer 1...
    2. covered last: a carton whose border touches a neighbour higher by cover_margin (on more than
       max_covered_share of the border ring) may lie partly under it;
    3. most free border first: the share of its border ring on no carton, or on cartons lower by cover_margin
       (a pallet's corner cartons before its edge cartons before its middle ones, which grippers reach best);
    4. higher first.
    The others (no usable pose) follow in the given order; they are never neighbours that cover or flank.
    """
    good = [i for i, pose in enumerate(poses) if pose.status == PoseStatus.OK]
    others = [i for i in range(len(poses)) if poses[i].status != PoseStatus.OK]
    if not good:
        return others
    up = _unit(np.sum([poses[i].normal for i in good], axis=0) if up is None else np.asarray(up, dtype=np.float64))
    heights = np.full(len(poses), np.nan)
    heights[good] = [poses[i].position @ up for i in good]
    layers = dict(zip(good, _layers(heights[good], params.layer_tolerance), strict=True))
    labels = _label_image(instances, image_size)
    keys = {}
    for i in good:
        covered_share, free_share = _border_shares(instances[i], i, labels, heights, params)
        keys[i] = (layers[i], covered_share > params.max_covered_share, -free_share, -heights[i])
    return sorted(good, key=keys.__getitem__) + others


def quaternion_from_matrix(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a 3x3 rotation matrix."""
    r = rotation
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    # Shepperd's method: solve for the largest component first, so nothing divides by a tiny number.
    largest = int(np.argmax([trace, r[0, 0], r[1, 1], r[2, 2]]))
    if largest == 0:
        s = 2 * math.sqrt(1 + trace)
        q = (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, s / 4
    elif largest == 1:
        s = 2 * math.sqrt(1 + r[0, 0] - r[1, 1] - r[2, 2])
        q = s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s
    elif largest == 2:
        s = 2 * math.sqrt(1 - r[0, 0] + r[1, 1] - r[2, 2])
        q = (r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s
    else:
        s = 2 * math.sqrt(1 - r[0, 0] - r[1, 1] + r[2, 2])
        q = (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4, (r[1, 0] - r[0, 1]) / s
    return tuple(float(v) for v in q)


# ----------------------------------------------------------------------------------------------------
# One carton


class _Fit(NamedTuple):
    """A carton's depth points: how many on its eroded mask, those few to fit planes to ((3, N) float32, rows x,
    y, z), the inlier distance, the camera's depth step there, its window's pixel rays (Intrinsics.normalised_grid)
    and which of the window's pixels have depth."""

    points: int
    thinned: np.ndarray
    tolerance: float
    step: float
    rays: tuple
    has_depth: np.ndarray


def _fit_points(roi, mask, depth_m, intrinsics, frame_rays, params) -> "_Fit | CartonPose":
    """The carton's _Fit, or the CartonPose saying why there is too little depth for one. frame_rays: the whole
    image's Intrinsics.normalised_grid without lens distortion (its row and column, sliced here), else None."""
    x, y, w, h = roi
    depth = depth_m[y:y + h, x:x + w]
    has_depth = measured_depth(depth)
    eroded = _erode(mask, params.erode_px).view(bool)  # Instance.mask holds 0 and 1
    on_mask = eroded & has_depth
    # Flat indices throughout: a fifth of the cost of (row, column) pairs on windows this small.
    measured = np.flatnonzero(on_mask)
    if len(measured) < max(params.min_points, params.min_valid_fraction * np.count_nonzero(eroded)):
        return CartonPose(PoseStatus.SPARSE_DEPTH, points=len(measured))
    every = -(-len(measured) // params.max_fit_points)  # evenly spread over the mask
    thin = measured[::every]
    rays = intrinsics.normalised_grid(x, y, w, h) if frame_rays is None else (frame_rays[0][:, x:x + w],
                                                                              frame_rays[1][y:y + h])
    thinned = np.empty((3, len(thin)), np.result_type(depth, rays[0]))
    z = thinned[2]
    z[:] = depth.flat[thin]  # (the window is a view into the image: depth.ravel() would copy it whole)
    ray_x, ray_y = _rays_at(rays, thin, w)
    np.multiply(ray_x, z, out=thinned[0])
    np.multiply(ray_y, z, out=thinned[1])
    # Never tighter than the camera's depth step there: quantisation alone spreads a plane's points over it.
    step = params.depth_step_at_1m * _median(z) ** 2
    noise = _depth_noise(depth, on_mask, params.noise_lag_px)
    tolerance = min(max(params.inlier_sigmas * noise, step, params.min_inlier_distance), params.max_inlier_distance)
    return _Fit(len(measured), thinned, tolerance, step, rays, has_depth)


@dataclass
class _TopWindow:
    """A carton's mask window with its top face's pixels (on_top: those nearest the top plane, _pixel_faces), its
    top's plane refitted on them, the side planes square to it, and those sides' pixels (side_fits, the rows `seen`
    of sides) that hold the top square to them (_square_to_sides, all cartons at once)."""

    quality: float
    mask: np.ndarray
    has_depth: np.ndarray
    on_top: np.ndarray
    rays: tuple
    plane: np.ndarray
    sides: np.ndarray
    top_fit: "_Face | None"
    side_fits: list
    seen: list


def _top_window(roi, mask, depth_m, params, fit, planes, top, tolerance, quality) -> _TopWindow:
    """The carton's _TopWindow: its faces' planes (K, 4), planes[top] its top face, tolerance the inlier distance
    of the top's extent."""
    x, y, w, h = roi
    mask = mask.view(bool)  # Instance.mask holds 0 and 1
    rays = fit.rays
    has_depth = mask & fit.has_depth
    # Branch-free masked copies (OpenCV's, and int8 arithmetic below) throughout: numpy's np.where and
    # copyto(where=) take a branch per pixel, several times the time on windows of tens of thousands.
    depth = depth_m[y:y + h, x:x + w]
    measured = cv2.copyTo(depth, has_depth.view(np.uint8), np.full((h, w), np.inf, depth.dtype))
    owner, on_top = _pixel_faces(mask, has_depth, measured, planes, top, tolerance, rays, params)
    # Each face's pixels, by flat index into the window (a fifth of the cost of (row, column) pairs), thinned
    # alike (so their weights keep their ratio), and their points all at once.
    pixels = [np.flatnonzero(on_top if k == top else owner == k) for k in range(len(planes))]
    every = max(-(-len(pixels[top]) // params.max_refit_points), 1)  # (a top without pixels fits nothing below)
    pixels = [own[::every] for own in pixels]
    starts = [0, *itertools.accumulate(len(own) for own in pixels)]
    flat = np.concatenate(pixels)
    points = np.empty((3, len(flat)), measured.dtype)
    z = np.take(measured.ravel(), flat, out=points[2])
    ray_x, ray_y = _rays_at(rays, flat, w)
    np.multiply(ray_x, z, out=points[0])
    np.multiply(ray_y, z, out=points[1])
    top_fit, plane = None, planes[top]
    if len(pixels[top]) >= 3:
        count, mean, scatter = _moments(points[:, starts[top]:starts[top + 1]])
        # With its normal: _square_to_sides needs it, and need not fit it again.
        top_fit = _Face(count, mean, scatter, _least_spread(scatter, mean))
        plane = top_fit.plane()
    # More than 60 degrees from the top (a list from Python floats: numpy calls cost more on three planes).
    square = [k for k, cosine in enumerate((planes[:, :3] @ plane[:3]).tolist()) if abs(cosine) < 0.5]
    side_fits, seen = [], []
    if top_fit is not None:
        for row, k in enumerate(square):
            if len(pixels[k]) * every >= 30:  # a few pixels fix no plane
                side_fits.append(_Face(*_moments(points[:, starts[k]:starts[k + 1]]), normal=planes[k, :3]))
                seen.append(row)
    return _TopWindow(quality, mask, has_depth, on_top, rays, plane, planes[square], top_fit, side_fits, seen)


def _depth_noise(depth, pixels, lag) -> float:
    """Robust standard deviation (metres) of the depth noise over pixels, with no plane fitted.

    Inverse depth is affine in (u, v) on any plane, so its second differences along rows are noise alone
    (variance 6 sigma² / Z⁴ for noise uncorrelated over `lag` pixels), except at creases, which the median
    ignores. A stereo camera's noise is correlated over its matching window: differences between neighbours
    would see almost none of it, hence the lag.
    """
    depth, pixels = depth[::2], pixels[::2]  # every other row is plenty for one number
    inverse = 1 / depth  # inf or NaN on pixels without depth, which `pixels` leaves out
    second = inverse[:, lag:-lag] * 2
    np.subtract(inverse[:, :-2 * lag], second, out=second)
    second += inverse[:, 2 * lag:]
    inside = pixels[:, :-2 * lag] & pixels[:, lag:-lag] & pixels[:, 2 * lag:]
    # Scaled on the whole window, then picked out once: one masked selection costs more than the arithmetic.
    middle = depth[:, lag:-lag]
    np.abs(second, out=second)
    second *= middle * middle
    scaled = second[inside]
    if not len(scaled):
        return 0.0
    return 1.4826 * _median(scaled) / math.sqrt(6)


def _counts(flags, axis) -> np.ndarray:
    """int32: how many of the bool flags are set along an axis. np.count_nonzero along an axis copies them and
    sums in int64, twice the time of summing their bytes in int32."""
    return flags.view(np.uint8).sum(axis=axis, dtype=np.int32)


def _median(values) -> float:
    """Median of a 1-D array: np.median's checks cost five times the selection itself on a few hundred values."""
    middle = len(values) // 2
    parted = np.partition(values, middle)
    if len(values) % 2:
        return float(parted[middle])
    return float(parted[:middle].max() + parted[middle]) / 2  # (partitioning at both costs twice as much)


def _find_faces(point_sets, tolerances, params, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The faces of every carton at once, from its (3, N) points: those points padded to one (C, 3, P) float32
    array (zeros past each carton's own: on no plane, as their rays are 0 / 0); its planes n . p + d = 0 with n
    toward the camera, (C, max_faces, 4), NaN past the faces found; and each point's plane (C, P), -1 for none."""
    counts = np.array([points.shape[1] for points in point_sets])
    points = np.zeros((len(point_sets), 3, counts.max()), np.float32)
    for padded, own in zip(points, point_sets, strict=True):
        padded[:, :own.shape[1]] = own
    tolerances = np.asarray(tolerances)[:, None, None]
    min_face = np.maximum(3, params.min_face_fraction * counts)
    unexplained = np.arange(points.shape[2]) < counts[:, None]
    members = np.zeros((len(points), params.max_faces, points.shape[2]), bool)  # each face's points
    faces = np.zeros(len(points), int)  # faces found so far
    searching = np.ones(len(points), bool)
    for face in range(params.max_faces):
        left = _counts(unexplained, axis=1)
        at = np.flatnonzero(searching & (left >= min_face))
        if not len(at):
            break
        # Each carton's unexplained points first, in order: RANSAC draws among them.
        candidates = np.argsort(~unexplained[at], axis=1, kind="stable")
        found = _ransac_planes(points[at], candidates, left[at], tolerances[at], params, rng)
        on_plane = unexplained[at] & (_depth_residuals(points[at], found[:, None])[:, 0] < tolerances[at, 0])
        held = _counts(on_plane, axis=1) >= min_face[at]
        at, on_plane = at[held], on_plane[held]
        members[at, face] = on_plane
        unexplained[at] &= ~on_plane
        faces[at] += 1
        searching[:] = False
        searching[at] = True
    products = _point_products(points.astype(np.float64))  # the fits sum in float64
    planes = _fit_planes(products, members)
    planes, owner = _settle_faces(points, products, planes, np.arange(params.max_faces) < faces[:, None],
                                  tolerances, min_face)
    return points, planes, owner


def _settle_faces(points, products, planes, found, tolerances, min_face):
    """Planes found first take the points along shared edges: give each point to its nearest plane and refit,
    twice; a plane left with fewer than min_face points goes (NaN). Returns the planes and each point's plane."""
    planes = np.where(found[..., None], planes, np.nan)
    shared = np.count_nonzero(found, axis=1) > 1  # a lone plane shares no edge: fitted on its points already
    shared_points = points[shared]
    shared_products = _Products(products.origin[shared], products.terms[shared])
    for _ in range(2):
        owner = _nearest_planes(shared_points, planes[shared], tolerances[shared])
        members = owner[:, None] == np.arange(planes.shape[1])[:, None]
        kept = _counts(members, axis=2) >= min_face[shared, None]
        planes[shared] = np.where(kept[..., None], _fit_planes(shared_products, members), np.nan)
    return planes, _nearest_planes(points, planes, tolerances)


def _nearest_planes(points, planes, tolerances) -> np.ndarray:
    """(C, P): each point's nearest plane in depth, -1 when none is within the tolerance (NaN planes: none)."""
    residuals = _depth_residuals(points, planes)
    residuals[np.isnan(planes[..., 0])] = np.inf
    # Plane by plane, as min and argmin along the short middle axis cost several times more; branch-free, as in
    # _pixel_faces (k where nearer: the planes before hold the points with indices below k).
    nearest, owner = residuals[:, 0], np.zeros(residuals[:, 0].shape, np.int64)
    for k in range(1, planes.shape[1]):
        np.maximum(owner, (residuals[:, k] < nearest) * k, out=owner)
        nearest = np.minimum(nearest, residuals[:, k])  # NaN (a point on no ray: padding) stays NaN, as min's
    return (owner + 1) * (nearest < tolerances[:, 0]) - 1


def _ransac_planes(points, candidates, counts, tolerances, params, rng) -> np.ndarray:
    """(C, 4): per carton, the plane through three of its candidate points that most of the others lie on.
    points (C, 3, P); candidates (C, P) indices into them, each carton's first counts[c] the candidates.

    All cartons and all hypotheses at once: each carton's hypotheses are scored on ransac_points of its
    candidates (drawn with replacement), as one batched product.
    """
    cartons, size = len(points), points.shape[2]

    def drawn(shape):  # (C, 3, *shape): candidate points drawn at random
        picks = (rng.random((cartons, *shape)) * counts.reshape(-1, *(1,) * len(shape))).astype(np.int64)
        # Flat indices: np.take costs half of what take_along_axis does.
        indices = np.take(candidates, picks.reshape(cartons, -1) + np.arange(0, cartons * size, size)[:, None])
        flat = indices[:, None] + np.arange(0, 3 * cartons * size, size).reshape(cartons, 3, 1)
        return np.take(points, flat).reshape(cartons, 3, *shape)

    triples = drawn((params.ransac_iterations, 3))  # (C, 3, I, 3)
    scored = drawn((params.ransac_points,))  # (C, 3, S)
    origin = triples[..., 0]
    normals = _crosses(triples[..., 1] - origin, triples[..., 2] - origin)  # (C, 3, I)
    # Dot products over x, y, z written out, added in np.sum's order: its reductions along a short axis cost
    # several times more.
    x, y, z = normals[:, 0], normals[:, 1], normals[:, 2]
    lengths = np.sqrt((x * x + y * y) + z * z)
    normals /= np.maximum(lengths, 1e-12)[:, None]
    offsets = -((x * origin[:, 0] + y * origin[:, 1]) + z * origin[:, 2])
    normals = np.ascontiguousarray(np.swapaxes(normals, 1, 2))  # (C, I, 3)
    # Depth residual |n . p + d| / |n . ray| below the tolerance, with ray = p / z: |n . p + d| z < tolerance
    # |n . p|, (cartons, I, S) at once from one batched product; a few cartons at a time, so that the arrays stay
    # in the CPU's cache (fifty cartons' all at once take a third longer).
    support = np.empty(normals.shape[:2], np.int32)
    for start in range(0, len(points), 8):
        part = slice(start, start + 8)
        along = normals[part] @ scored[part]
        distances = along + offsets[part, :, None]
        np.abs(distances, out=distances)
        distances *= scored[part, 2:]
        np.abs(along, out=along)
        along *= tolerances[part].astype(np.float32)
        support[part] = _counts(np.less(distances, along), axis=2)
    support[lengths < 1e-9] = -1  # collinear triples
    best = np.argmax(support, axis=1)
    chosen = np.arange(len(points))
    return np.column_stack([normals[chosen, best], offsets[chosen, best]])


class _Products(NamedTuple):
    """Each carton's first point (C, 3), and the offsets (C, 3, P) of its points from it followed by their
    products (C, 6, P) (the _PAIRS): the terms _fit_planes sums, whichever points it fits."""

    origin: np.ndarray
    terms: np.ndarray


def _point_products(points) -> _Products:
    """_Products of float64 points (C, 3, P), taken about each carton's first point (a few decimetres away at
    most, so float64 sums lose nothing to cancellation)."""
    origin = points[:, :, 0].copy()
    terms = np.empty((len(points), 9, points.shape[2]))
    offsets = terms[:, :3]
    np.subtract(points, origin[..., None], out=offsets)
    for row, (i, j) in enumerate(_PAIRS, start=3):
        np.multiply(offsets[:, i], offsets[:, j], out=terms[:, row])
    return _Products(origin, terms)


def _fit_planes(products, members) -> np.ndarray:
    """(C, K, 4): least-squares planes (n, d), n toward the camera, of the points (their _Products) on the members
    (C, K, P) of each (NaN with fewer than 3); from the sums of the points and of their products, as one batched
    product."""
    count = _counts(members, axis=2)
    fitted = count >= 3  # the others: NaN
    count = np.maximum(count, 1)[..., None]
    sums = members.astype(np.float64) @ np.swapaxes(products.terms, 1, 2) / count  # (C, K, 9): means of the
    # offsets and of their products
    mean = sums[..., :3]
    scatter = count[..., None] * (sums[..., _SYMMETRIC + 3] - mean[..., :, None] * mean[..., None, :])
    mean += products.origin[:, None]
    normal = np.full(mean.shape, np.nan)
    normal[fitted] = _least_spread(scatter[fitted], mean[fitted])
    return np.concatenate([normal, -np.sum(normal * mean, axis=-1, keepdims=True)], axis=-1)


_PAIRS = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]  # the products a symmetric 3x3 matrix needs...
_SYMMETRIC = np.array([[0, 1, 2], [1, 3, 4], [2, 4, 5]])  # ...and where each of its entries is among them


def _depth_residuals(points, planes) -> np.ndarray:
    """(..., K, N) depth differences between each point (..., 3, N) and where its pixel's ray meets each plane
    (..., K, 4).

    Depth noise runs along the rays, so this, not the distance to the plane, is what the tolerance bounds.
    It also keeps planes seen edge-on, which pass near points at any depth along their rays, from
    explaining anything.

    In the points' precision: float32 ones' residuals are exact to 1e-7 of the depth, far below any tolerance
    they are held to, at half the cost of float64's.
    """
    planes = planes.astype(points.dtype)
    along = planes[..., :3] @ points
    along_rays = along / points[..., 2:, :]
    along += planes[..., 3:]
    along /= along_rays  # parallel rays: inf
    return np.abs(along, out=along)


def _top_faces(points, planes, owner, up, params) -> tuple[np.ndarray, np.ndarray]:
    """Per carton, which of its planes its top face is (-1: none) and the robust spread in depth of the top's
    points about it; all cartons at once, from _find_faces' arrays.

    The top is the face that is most up (or, without up, the most squarely facing the camera), or the face
    with the most points of those parallel to it (a band of the floor or of a lower neighbour inside the mask,
    from colour-depth misregistration, is parallel to the top too).
    """
    normals = planes[..., :3]
    found = ~np.isnan(planes[..., 0])
    members = owner[:, None] == np.arange(planes.shape[1])[:, None]  # (C, K, P)
    counts = _counts(members, axis=2)
    if up is not None:
        score = np.where(found, normals @ up, -np.inf)
    else:
        # Cosine between a face's normal and the direction from the face to the camera: d / |centre| for a
        # plane n . p + d = 0 through the centre of its points.
        centres = members @ np.swapaxes(points, 1, 2) / counts[..., None]
        score = np.where(found, planes[..., 3] / np.sqrt(np.sum(centres * centres, axis=2)), -np.inf)
    cartons = np.arange(len(planes))
    best = np.argmax(score, axis=1)  # a NaN score (a plane left without points) wins, as np.argmax has it
    parallel = np.sum(normals * normals[cartons, best][:, None], axis=2) >= math.cos(math.radians(params.parallel_deg))
    top = np.argmax(np.where(parallel, counts, -1), axis=1)
    top[~found.any(axis=1)] = -1
    if up is not None:
        top[score[cartons, best] < math.cos(math.radians(params.max_top_tilt_deg))] = -1
    # The median of each top's residuals: sorted, the points off the top last.
    topped = np.flatnonzero(top >= 0)
    residuals = _depth_residuals(points[topped], planes[topped, top[topped]][:, None])[:, 0]
    residuals = np.sort(np.where(owner[topped] == top[topped, None], residuals, np.inf), axis=1)
    on_top = counts[topped, top[topped]]
    spread = np.full(len(planes), np.nan)
    rows = np.arange(len(topped))
    spread[topped] = 1.4826 * (residuals[rows, (on_top - 1) // 2] + residuals[rows, on_top // 2]) / 2
    return top, spread


def _pixel_faces(mask, has_depth, measured, planes, top, tolerance, rays, params) -> tuple[np.ndarray, np.ndarray]:
    """(h, w) int8: each window pixel's face, its index in planes, or -1 for none; and (h, w) bool: where that is
    the top. Whole-window arrays throughout: a plane's depth at every pixel of the window is one product of its
    rays (_plane_depths).

    Pixels with depth (measured: their depth, inf elsewhere) belong to their nearest plane, or to none when off
    every plane. Along the top's boundary (the mask's edge, or where a side or pixels on no plane begin), a
    side's first pixels past the crease, or a side seen edge-on, show as a strip of a few pixels just beyond the
    top plane: there, the far half of the tolerance is no longer top.
    """
    for k, residual in enumerate(_plane_depths(planes, rays)):
        residual = residual.astype(measured.dtype, copy=False)
        if k == top:
            np.subtract(measured, residual, out=residual)  # beyond the plane: positive
            beyond_top = residual > tolerance / 2
            np.abs(residual, out=residual)
        else:
            cv2.absdiff(measured, residual, dst=residual)  # the same, in one pass
        if k == 0:
            nearest = np.minimum(residual, np.float32(tolerance)).astype(np.float32, copy=False)
            owner = (residual < np.float32(tolerance)).view(np.int8) - np.int8(1)  # 0 where within it, -1 elsewhere
            continue
        # k where nearer, unchanged elsewhere: the planes before hold the pixels with indices below k.
        np.maximum(owner, (residual < nearest).view(np.int8) * np.int8(k + 1) - np.int8(1), out=owner)
        if k < len(planes) - 1:
            np.minimum(nearest, residual, out=nearest)
    on_top = owner == top
    strip = on_top & beyond_top
    if strip.any():  # (none on clean depth: no ring to find)
        off_ring = _erode((on_top | (mask & ~has_depth)).view(np.uint8), params.edge_ring_px).view(bool)
        owner -= (strip & ~off_ring).view(np.int8) * np.int8(top + 1)  # top (the strip) to -1
        on_top = owner == top
    return owner, on_top


def _top_outline(window, params) -> tuple[np.ndarray, np.ndarray]:
    """The rays (x, y) of the window's top-face pixels on the outlines of its pieces: where they meet its top plane
    (_face_rectangles) is the face's outline, exact and free of depth noise.

    Pixels without depth (holes, sensor shadows) within fill_px of one with it go with the nearest such, so the
    face reaches the mask's edge. The top face ends where a side begins: points beyond a plane square to the top
    (the crease) go, which noise alone cannot place. What is left is the top face, in as many pieces as holes
    too wide to fill (glossy tape, dark print) cut it into: every piece counts but specks (min_fragment of it).
    """
    mask, has_depth, plane, rays = window.mask, window.has_depth, window.plane, window.rays
    straight = rays[0].shape[0] == 1  # the rays a row and a column: no lens distortion
    region = window.on_top
    if np.count_nonzero(has_depth) < np.count_nonzero(mask):  # holes in the depth
        # Labels number the pixels with depth in row-major order: look up whether each one's nearest is top.
        no_depth = (~has_depth).view(np.uint8)
        gap, nearest = cv2.distanceTransformWithLabels(no_depth, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        region = mask & (gap <= params.fill_px) & region[has_depth][nearest - 1]
    # The top is often a fraction of its window (which holds the sides too): from here on, only its bounding box
    # and a pixel round it (so that the opening meets its edge as in the whole window) are worked on.
    left, upper, width, height = cv2.boundingRect(region.view(np.uint8))
    box_rows, box_columns = slice(max(upper - 1, 0), upper + height + 1), slice(max(left - 1, 0), left + width + 1)
    region = region[box_rows, box_columns]
    rays = ((rays[0][:, box_columns], rays[1][box_rows]) if straight
            else (rays[0][box_rows, box_columns], rays[1][box_rows, box_columns]))
    for side in window.sides:
        # Behind the side's outer surface where the pixel's ray r meets the top plane (n, d), at z r with
        # z = -d / (n . r) > 0: s . z r + s_d <= 0, that is (d s - s_d n) . r <= 0, a half-plane of the image.
        line = plane[3] * side[:3] - side[3] * plane[:3]
        # (Not &=: region may be a view of the window's on_top still.)
        if straight:
            region = region & _behind_line(line, rays)
        else:
            region = region & (line[1] * rays[1] <= -(line[0] * rays[0] + line[2]))
    # Spurs under 3 pixels across are depth steps and noise along the crease, not face: a single one would
    # widen the rectangle around the face. Opening leaves the face's straight edges and corners where they are.
    region = cv2.morphologyEx(region.view(np.uint8), cv2.MORPH_OPEN, None)  # (None: a 3x3 square)
    # The rectangle around the pieces is the one around their convex hulls, which their outer outlines hold: the
    # ends of each straight run of them where the rays are straight in the image, all of them where lens
    # distortion bends the rays. OpenCV's pieces are 8-connected, as connectedComponents' are.
    outlines, hierarchy = cv2.findContours(region, cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE if straight else cv2.CHAIN_APPROX_NONE)
    # RETR_CCOMP: each piece's outer outline has no parent (its holes' outlines do).
    if not outlines:  # nothing, or nothing but spurs
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    outer = [outline[:, 0] for outline, links in zip(outlines, hierarchy[0], strict=True) if links[3] < 0]
    if len(outer) > 1:  # more than one piece: drop the specks
        _, labels, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        areas = stats[:, cv2.CC_STAT_AREA]
        areas[0] = 0  # the background
        kept = areas >= params.min_fragment * areas.sum()
        outer = [outline for outline in outer if kept[labels[outline[0, 1], outline[0, 0]]]]
        if not outer:  # all specks (more than 1 / min_fragment pieces)
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
    columns, rows = np.concatenate(outer).T
    if straight:
        return rays[0][0, columns], rays[1][rows, 0]
    return rays[0][rows, columns], rays[1][rows, columns]


class _Face(NamedTuple):
    """A face's pixel points by their count, mean and scatter matrix (sum of outer products about the mean), and
    the normal of a plane fitted to them (toward the camera), which `fitted_normal` finds when not given."""

    count: int
    mean: np.ndarray
    scatter: np.ndarray
    normal: np.ndarray | None = None

    def fitted_normal(self) -> np.ndarray:
        return self.normal if self.normal is not None else _least_spread(self.scatter, self.mean)

    def plane(self) -> np.ndarray:
        normal = self.fitted_normal()
        return np.concatenate([normal, [-normal @ self.mean]])


def _moments(points) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, mean and scatter matrix of (3, N) points: rows, as numpy's reductions along the short axis of an
    (N, 3) array cost several times more."""
    mean = points.sum(axis=1, dtype=np.float64) / points.shape[1]
    # The offsets from the mean and their products in float64, as a face's squared residuals (what weighs it in
    # _square_to_sides) are 1e-5 of the scatter's entries at 1 mm noise: cv2.mulTransposed does both in one pass
    # on one thread, in two thirds of the time of numpy's four steps. (Not cv2.calcCovarMatrix: its worker
    # threads can spin on after each call, CPU time taken from the rest of the node.)
    return points.shape[1], mean, cv2.mulTransposed(points, False, delta=mean[:, None], dtype=cv2.CV_64F)


def _least_spread(scatter, mean) -> np.ndarray:
    """The direction of least spread of each (..., 3, 3) scatter matrix, toward the camera at the origin from
    mean (..., 3): OpenCV's symmetric eigensolver for one (a fifth of numpy's time), numpy's for a batch."""
    if scatter.ndim == 2:
        normal = cv2.eigen(scatter)[2][2]
        return -normal if normal @ mean > 0 else normal
    normal = np.linalg.eigh(scatter)[1][..., 0]  # eigenvalues ascending
    return np.where(np.sum(normal * mean, axis=-1, keepdims=True) > 0, -normal, normal)


def _square_to_sides(tops, sides) -> tuple[np.ndarray, list]:
    """Each box's top plane and side planes refitted together, all boxes at once: tops, a _Face each, and sides,
    a list of one or two _Faces (with their normals) each. Returns the (B, 4) top planes and each box's (S, 4)
    side planes.

    A box's sides stand square to its top, and a side seen obliquely fixes the top's tilt across it better than
    the top's own points do. Each face counts by its points over its own mean squared residual (so a ragged side
    counts little), and the box turns until the weighted sum of squared distances of every face's points to its
    face is least: one Gauss-Newton step from the top's own plane (the faces RANSAC found are within degrees of
    square; a second step changes nothing)."""
    faces = [[top, *own] for top, own in zip(tops, sides, strict=True)]
    # Boxes with one side get a second of no weight (no points), lying on the top, so all are (B, F) arrays.
    most = max(len(own) for own in faces)
    faces = [own + [own[0]._replace(count=0, scatter=np.zeros((3, 3)))] * (most - len(own)) for own in faces]
    counts = np.array([[face.count for face in own] for own in faces])
    scatters = np.array([[face.scatter for face in own] for own in faces])
    means = np.array([[face.mean for face in own] for own in faces])
    normals = np.array([[face.fitted_normal() for face in own] for own in faces])
    normal = normals[:, 0]
    x_axis = _units(normals[:, 1] - np.sum(normals[:, 1] * normal, axis=1, keepdims=True) * normal)
    box = np.stack([x_axis, _crosses(normal, x_axis), normal], axis=2)  # columns: each box's axes
    weights = counts / np.maximum((normals[..., None, :] @ scatters @ normals[..., None])[..., 0, 0], 1e-12)
    along = normals @ box  # (B, F, 3): each face's normal in its box's axes
    axes = np.argmax(np.abs(along), axis=2)
    normals = np.swapaxes(np.take_along_axis(box, axes[:, None], axis=2)
                          * np.sign(np.take_along_axis(along, axes[..., None], axis=2))[..., 0][:, None], 1, 2)
    # A turn by the small rotation vector w moves a normal n by w x n = -[n]x w: the weighted squared distances
    # are quadratic in w, with Hessian sum [n]x^T C [n]x and gradient sum [n]x^T C n.
    crosses = np.zeros((*normals.shape, 3))  # [n]x of each face
    crosses[..., [2, 0, 1], [1, 2, 0]] = normals
    crosses[..., [1, 2, 0], [2, 0, 1]] = -normals
    weighted = weights[..., None, None] * np.swapaxes(crosses, 2, 3) @ scatters
    hessians = np.sum(weighted @ crosses, axis=1)
    gradients = np.sum(weighted @ normals[..., None], axis=1)
    turns = np.array([cv2.Rodrigues(cv2.solve(hessian, gradient, flags=cv2.DECOMP_SVD)[1])[0]
                      for hessian, gradient in zip(hessians, gradients, strict=True)])
    normals = normals @ np.swapaxes(turns, 1, 2)
    planes = np.concatenate([normals, -np.sum(normals * means, axis=2, keepdims=True)], axis=2)
    return planes[:, 0], [own_planes[1:len(own) + 1] for own_planes, own in zip(planes, sides, strict=True)]


def _erode(mask, radius) -> np.ndarray:
    """cv2.erode by a (2 radius + 1)² square, with nothing beyond the window: a mask ends at its window's edge
    (OpenCV's default border would carry it on, so the mask's outermost pixels would never be its edge)."""
    # (No kernel: OpenCV's 3x3 square, which it widens to the (2 radius + 1)² one for `radius` iterations.)
    return cv2.erode(mask, None, iterations=radius, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def _rays_at(rays, pixels, width) -> tuple[np.ndarray, np.ndarray]:
    """The rays (x, y) of a window's pixels by flat index, from its Intrinsics.normalised_grid: a row and a
    column, or (without distortion) whole arrays."""
    ray_x, ray_y = rays
    if ray_x.shape[0] == 1:
        rows = pixels // width  # numpy divides by one number fast; % and 2-D fancy indices cost twice as much
        return ray_x[0][pixels - rows * width], ray_y[:, 0][rows]
    return ray_x.ravel()[pixels], ray_y.ravel()[pixels]


def _plane_depths(planes, rays):
    """Depth (h, w) at which each pixel's ray (x, y, 1) meets each plane n . p + d = 0 of planes (K, 4), plane by
    plane: -d / (n . ray); inf or negative where it never does (rays parallel to the plane, or meeting it behind
    the camera)."""
    normals = planes[:, :3].astype(np.float32)
    depths = (-planes[:, 3]).astype(np.float32)
    ray_x, ray_y = rays
    if ray_x.shape[0] > 1:
        for normal, depth in zip(normals, depths, strict=True):
            yield np.divide(depth, normal[0] * ray_x + normal[1] * ray_y + normal[2])
        return
    # A row and a column: n . ray = (n_y y_i + n_x x_j) + n_z, each plane's as one matrix product [n_y y_i, 1, 1]
    # [1, n_x x_j, n_z]^T: the same exact products summed in the same order, in a third of the time of numpy's
    # broadcast sum (which runs its inner loop once per row). The factors of all planes are made at once.
    left = np.ones((len(planes), len(ray_y), 3), np.float32)
    np.multiply(normals[:, 1:2], ray_y[:, 0], out=left[:, :, 0])
    right = np.ones((len(planes), 3, ray_x.shape[1]), np.float32)
    np.multiply(normals[:, :1], ray_x[0], out=right[:, 1])
    right[:, 2] = normals[:, 2:]
    for depth, own_left, own_right in zip(depths, left, right, strict=True):
        along = own_left @ own_right
        yield np.divide(depth, along, out=along)


def _behind_line(line, rays) -> np.ndarray:
    """(h, w) bool: where line . (x, y, 1) <= 0 on a window's straight rays (a row and a column). Along a row the
    sum is monotone in the column (the ray's x grows with it), so each row holds it on a run of columns from one
    end: a sorted search per row, and no (h, w) sum."""
    across = line[0] * rays[0][0] + line[2]
    down = line[1] * rays[1][:, 0]
    # The smallest integers that hold every column and the row's end (the comparison moves the fewest bytes).
    index = np.min_scalar_type(len(across))
    columns = np.arange(len(across), dtype=index)
    # A sum of two numbers rounds to a number of its own sign: across + down <= 0 exactly when across <= -down.
    if line[0] >= 0:  # across rises along the row: a run from the left
        return columns < np.searchsorted(across, -down, side="right").astype(index)[:, None]
    return columns >= np.searchsorted(-across, down, side="left").astype(index)[:, None]


def _face_rectangles(ray_sets, planes, intrinsics) -> list:
    """Pick point, rotation, length and width of the minimum-area rectangle around the points where each set of
    rays (x, y, 1) (two (N,) arrays) meets its plane n . p + d = 0 (B, 4): OpenCV's rectangle for each, the
    geometry around it for all at once."""
    normal = planes[:, :3]
    sizes = [len(x) for x, _ in ray_sets]
    x, y = (np.concatenate([rays[axis] for rays in ray_sets]) for axis in (0, 1))
    plane = np.repeat(planes, sizes, axis=0)
    z = -plane[:, 3] / (plane[:, 0] * x + plane[:, 1] * y + plane[:, 2])
    points = np.stack([x * z, y * z, z], axis=1)
    origins = np.add.reduceat(points, [0, *itertools.accumulate(sizes[:-1])]) / np.array(sizes)[:, None]
    e1 = _units(np.array([1.0, 0.0, 0.0]) - normal[:, :1] * normal)  # camera x laid onto the plane
    e2 = _crosses(normal, e1)
    offsets = points - np.repeat(origins, sizes, axis=0)
    in_plane = np.stack([np.sum(offsets * np.repeat(axis, sizes, axis=0), axis=1) for axis in (e1, e2)], axis=1)
    centres, corners = [], []
    for own in np.split(in_plane.astype(np.float32), list(itertools.accumulate(sizes[:-1]))):
        rect = cv2.minAreaRect(own)
        centres.append(rect[0])
        corners.append(cv2.boxPoints(rect))
    centres, corners = np.array(centres), np.array(corners, np.float64)
    side_a, side_b = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 1]
    a_longer = (np.hypot(*side_a.T) >= np.hypot(*side_b.T))[:, None]
    long_side, short_side = np.where(a_longer, side_a, side_b), np.where(a_longer, side_b, side_a)
    x_axis = _units(long_side[:, :1] * e1 + long_side[:, 1:] * e2)
    x_axis *= np.where(x_axis[:, :1] < 0, -1.0, 1.0)  # of the two directions along the long edge, toward image right
    y_axis = _crosses(normal, x_axis)
    positions = origins + centres[:, :1] * e1 + centres[:, 1:] * e2
    # The outermost pixel centres stop short of the face's edges: by half a pixel on edges along the pixel
    # grid, by almost nothing on slanted ones. Half a pixel in all is at most half a pixel off either way.
    lengths = np.hypot(*long_side.T) + _metres_per_pixel(positions, x_axis, intrinsics) / 2
    widths = np.hypot(*short_side.T) + _metres_per_pixel(positions, y_axis, intrinsics) / 2
    rotations = np.stack([x_axis, y_axis, normal], axis=2)
    return [(position, rotation, float(length), float(width))
            for position, rotation, length, width in zip(positions, rotations, lengths, widths, strict=True)]


def _metres_per_pixel(points, directions, intrinsics) -> np.ndarray:
    """Distance along each direction (N, 3), at each point (N, 3), that moves its image by one pixel (the
    projection's derivative)."""
    x, y, z = points.T
    du = intrinsics.fx * (directions[:, 0] * z - x * directions[:, 2]) / z ** 2
    dv = intrinsics.fy * (directions[:, 1] * z - y * directions[:, 2]) / z ** 2
    return 1.0 / np.hypot(du, dv)


def _unit(vector) -> np.ndarray:
    return vector / math.sqrt(vector @ vector)


def _crosses(a, b) -> np.ndarray:
    """a x b along the second axis of two (N, 3, ...) arrays: np.cross costs several times more."""
    return np.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                     a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], axis=1)


def _units(vectors) -> np.ndarray:
    """Each row of (N, 3) vectors over its length."""
    return vectors / np.sqrt(np.sum(vectors * vectors, axis=1, keepdims=True))


# ----------------------------------------------------------------------------------------------------
# Pick order


def _layers(heights, tolerance) -> np.ndarray:
    """Layer index of each height, 0 = top: a layer is its highest member and all within tolerance below it."""
    layers = np.empty(len(heights), int)
    layer, layer_top = -1, math.inf
    for i in np.argsort(-heights):
        if heights[i] < layer_top - tolerance:
            layer, layer_top = layer + 1, heights[i]
        layers[i] = layer
    return layers


def _label_image(instances, image_size) -> np.ndarray:
    """(H, W) int32: index + 1 of the instance each pixel belongs to, 0 for none."""
    labels = np.zeros(image_size, np.int32)
    for index, instance in enumerate(instances):
        x, y, w, h = instance.roi
        labels[y:y + h, x:x + w][instance.mask.astype(bool)] = index + 1
    return labels


def _border_shares(instance, index, labels, heights, params) -> tuple[float, float]:
    """Shares of the ring around a mask on higher neighbours (covering) and on nothing or lower ones (free)."""
    x, y, w, h = instance.roi
    ring_px = params.ring_px
    x0, y0 = max(x - ring_px, 0), max(y - ring_px, 0)
    x1, y1 = min(x + w + ring_px, labels.shape[1]), min(y + h + ring_px, labels.shape[0])
    own = np.zeros((y1 - y0, x1 - x0), np.uint8)
    own[y - y0:y - y0 + h, x - x0:x - x0 + w] = instance.mask
    ring = cv2.dilate(own, np.ones((2 * ring_px + 1,) * 2, np.uint8)).astype(bool) & ~own.astype(bool)
    neighbours = labels[y0:y1, x0:x1][ring] - 1
    if len(neighbours) == 0:  # the mask fills the image
        return 0.0, 0.0
    # Neighbours without a pose (NaN height) compare false both ways: neither covering nor free.
    rise = np.where(neighbours >= 0, heights[neighbours], -np.inf) - heights[index]
    with np.errstate(invalid="ignore"):
        return float(np.mean(rise > params.cover_margin)), float(np.mean(rise < -params.cover_margin))
