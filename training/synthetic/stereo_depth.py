"""What an active stereo depth camera (RealSense D4xx-, Orbbec-class) makes of a scene's exact depth.

stereo_depth() turns the renderer's clean depth into the depth such a camera publishes aligned to its
colour image, with the errors that break a pick-pose fit on real captures:
- depth quantised in disparity: z = f B / d with d in steps of `subpixel` pixels, so the depth step grows
  with the square of the distance (f 640 px, B 50 mm, 0.08 px: 2.5 mm at 1 m, 5.6 at 1.5 m, 15.6 at 2.5 m);
- spatially correlated noise: block matching smooths its errors over its window, so neighbours err together
  (disparity noise of `noise_px`, smoothed over `correlation_px`: about 3.5 mm at 1.5 m);
- at depth edges, flying pixels (depths between the near and the far surface) and occlusion shadows (the
  background just left of a nearer surface is hidden from the right imager: no depth);
- holes where stereo matching fails: dark surfaces, and glossy packing tape along the middle of carton tops;
- carton tops that bulge or sag by a few millimetres (flaps pushed up by the contents, or sagging over them);
- colour-depth misregistration: the depth image shifted by a few pixels against the colour image, as a
  slightly wrong depth-to-colour extrinsic calibration leaves it.
The scene's 3D truth (cartons, labels) stays as rendered: the camera errs, the world does not.
stereo_frames() films a still scene several times, for temporal averaging: which of these errors repeat in
every frame and which are drawn anew is in its docstring.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class StereoCamera:
    baseline: float = 0.05  # metres between the imagers
    focal_px: float = 640.0  # the depth imagers' focal length in their own pixels (1280x720, ~87 degrees)
    subpixel: float = 0.08  # disparity resolution, pixels: the depth step is z² subpixel / (focal B)
    noise_px: float = 0.05  # standard deviation of the disparity noise, pixels...
    correlation_px: float = 3.0  # ...smoothed over this many colour pixels (Gaussian sigma)
    edge_jump: float = 0.02  # metres: a depth edge is a jump of at least this between neighbours...
    flying_odds: float = 0.5  # ...where pixels next to it measure between the two surfaces this often
    speckle_odds: float = 0.003  # isolated pixels without depth anywhere
    dark_level: float = 0.12  # grey level (of 1) below which stereo matching fails...
    dark_odds: float = 0.8  # ...this often
    tape_odds: float = 0.5  # share of carton tops whose glossy tape loses depth...
    tape_width: tuple[float, float] = (0.045, 0.075)  # ...across a band this wide (metres), along the long axis
    bulge_mm: tuple[float, float] = (1.0, 5.0)  # tops bulge or sag by this much at their centre
    shift_px: tuple[float, float] = (1.0, 4.0)  # colour-depth misregistration, when not given

    def depth_step(self, z):
        """Metres between neighbouring depth values at distance z."""
        return np.asarray(z) ** 2 * self.subpixel / (self.focal_px * self.baseline)


def stereo_depth(depth_mm, labels, top_face, image, camera, cartons, rng, stereo=StereoCamera(), shift=None):
    """(depth in mm as uint16, 0 = none; the misregistration (dx, dy) in pixels) of a scene seen by `stereo`.

    depth_mm: (H, W) the clean depth, 0 = no surface; labels, top_face: the scene's (H, W) carton labels and
    top-face pixels; image: (H, W, 3) uint8 RGB; camera: fx, fy, cx, cy of the colour camera; cartons: each
    label's Carton3D (camera frame); rng: np.random.Generator. shift: (dx, dy) pixels the depth image lands
    off the colour one, or None for a random 1-4 px; (0, 0) for none.
    """
    frames, shift = stereo_frames(depth_mm, labels, top_face, image, camera, cartons, rng, 1, stereo, shift)
    return frames[0], shift


def stereo_frames(depth_mm, labels, top_face, image, camera, cartons, rng, count, stereo=StereoCamera(),
                  shift=None):
    """([count depth frames in mm as uint16], the misregistration) of a static scene filmed by `stereo`: a pallet
    between two picks. The arguments are stereo_depth's; its frame is the first of these (same rng, same
    draws), so the frames are of the very scene and camera error that stereo_depth shows one frame of.

    The same in every frame, because it comes from the scene and the camera's geometry, which do not move:
    - the tops' bulge or sag, and the misregistration (an extrinsic calibration error);
    - the disparity grid (depth steps): averaging frames only dithers through it as far as the noise does;
    - occlusion shadows (which background the right imager cannot see) and the glossy tape's blotches
      (specular reflection of the projector, fixed by where tape, projector and camera are).
    Drawn anew in each frame, because it comes from the imagers' own noise, independent frame to frame (what
    RealSense's temporal filter relies on):
    - the subpixel disparity noise, with its spatial correlation (block matching smooths each frame's noise);
    - which pixels beside a depth edge fly, and where between the surfaces (the matching window straddling the
      edge goes either way with the noise); the edge itself stays where it is;
    - failed matches on dark surfaces (the IR signal there hovers at the matching threshold, so the noise decides
      each frame) and isolated speckle.
    Each frame alone has exactly stereo_depth's error model: averaging frames only removes what is independent.
    """
    height, width = depth_mm.shape
    z = np.where(depth_mm > 0, depth_mm / 1000.0, np.nan)
    v, u = np.mgrid[:height, :width]
    rays = np.dstack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones((height, width))])
    z = _bulge_tops(z, labels, top_face, rays, cartons, rng, stereo)
    static_holes = _tape_holes(z, labels, top_face, rays, cartons, rng, stereo)
    shadows = _occlusion_shadows(z, camera.fx * stereo.baseline)
    dark = cv2.GaussianBlur(image.astype(np.float32).mean(axis=2) / 255, (0, 0), 2) < stereo.dark_level
    frames = [_frame(z, static_holes, shadows, dark, rng, stereo)]
    if shift is None:  # drawn after the first frame, as stereo_depth always drew it: its frame stays the first
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(*stereo.shift_px)
        shift = (round(length * math.cos(angle)), round(length * math.sin(angle)))
    frames += [_frame(z, static_holes, shadows, dark, rng, stereo) for _ in range(count - 1)]
    millimetres = []
    for measured in frames:
        measured = _shifted(measured, *shift)
        millimetres.append(np.where(np.isfinite(measured) & (measured < 65.5), np.round(measured * 1000), 0)
                           .astype(np.uint16))
    return millimetres, shift


def _frame(z, static_holes, shadows, dark, rng, stereo):
    """One frame's depth in metres (NaN = none) of the bulged scene z: this frame's noise on the static grid."""
    focal_b = stereo.focal_px * stereo.baseline
    noise = _smooth_noise(rng, z.shape, stereo.correlation_px) * stereo.noise_px
    disparity = np.round((focal_b / z + noise) / stereo.subpixel) * stereo.subpixel
    with np.errstate(divide="ignore", invalid="ignore"):
        measured = np.where(disparity > 0, focal_b / disparity, np.nan)
    measured = _flying_pixels(measured, z, rng, stereo)
    holes = static_holes | shadows
    holes |= dark & (rng.random(z.shape) < stereo.dark_odds)
    holes |= rng.random(z.shape) < stereo.speckle_odds
    measured[holes] = np.nan
    return measured


def _top_coordinates(labels, top_face, rays, z, carton, label):
    """Pixels of a carton's top face, and their (s, t) along its length and width from the top's centre."""
    rows, cols = np.nonzero((labels == label) & top_face & np.isfinite(z))
    offsets = rays[rows, cols] * z[rows, cols, None] - carton.top_center
    return rows, cols, offsets @ carton.rotation[:, 0], offsets @ carton.rotation[:, 1]


def _bulge_tops(z, labels, top_face, rays, cartons, rng, stereo):
    """Each visible top pushed out (or in) along its normal, most at its centre, none at its edges."""
    z = z.copy()
    for label in np.unique(labels[top_face]):
        carton = cartons[label - 1]
        rows, cols, s, t = _top_coordinates(labels, top_face, rays, z, carton, label)
        height = rng.choice([-1, 1]) * rng.uniform(*stereo.bulge_mm) / 1000
        length, width = carton.size[:2]
        lift = height * np.clip(1 - (2 * s / length) ** 2, 0, 1) * np.clip(1 - (2 * t / width) ** 2, 0, 1)
        # Moving a plane by h along its normal n moves its depth along ray r by h / (n . r).
        z[rows, cols] += lift / (rays[rows, cols] @ carton.top_normal)
    return z


def _tape_holes(z, labels, top_face, rays, cartons, rng, stereo):
    """Glossy tape along the middle of some tops: blotches without depth over most of the band."""
    holes = np.zeros(z.shape, bool)
    blotches = _smooth_noise(rng, z.shape, 2.0) > rng.uniform(-1.0, 0.3)
    for label in np.unique(labels[top_face]):
        if rng.random() >= stereo.tape_odds:
            continue
        carton = cartons[label - 1]
        rows, cols, _, t = _top_coordinates(labels, top_face, rays, z, carton, label)
        band = np.abs(t) < rng.uniform(*stereo.tape_width) / 2
        holes[rows[band], cols[band]] = True
    return holes & blotches


def _smooth_noise(rng, shape, sigma):
    """Gaussian noise smoothed over sigma pixels, rescaled to unit standard deviation."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return noise / noise.std()


def _flying_pixels(measured, z, rng, stereo):
    """Pixels beside a depth edge measure, this often, somewhere between the near and the far surface."""
    out = measured.copy()
    filled = np.nan_to_num(z, nan=0.0).astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    far = cv2.dilate(filled, kernel)  # the farthest neighbour (missing depth counts as nothing)
    near = -cv2.dilate(-np.where(filled > 0, filled, np.inf).astype(np.float32), kernel)
    edge = (far - near > stereo.edge_jump) & np.isfinite(near) & (filled > 0)
    flying = edge & (rng.random(z.shape) < stereo.flying_odds)
    mix = rng.random(np.count_nonzero(flying))
    out[flying] = near[flying] + mix * (far[flying] - near[flying])
    return out


def _occlusion_shadows(z, focal_baseline):
    """Pixels the right imager cannot see: a nearer surface within their disparity difference to the right."""
    disparity = np.nan_to_num(focal_baseline / z, nan=0.0)
    shadow = np.zeros(z.shape, bool)
    widest = int(math.ceil(np.nanmax(disparity) - np.nanmin(np.where(disparity > 0, disparity, np.inf))))
    for k in range(1, max(widest, 0) + 1):
        shadow[:, :-k] |= disparity[:, k:] - disparity[:, :-k] >= k
    return shadow


def _shifted(image, dx, dy):
    """image moved by (dx, dy) whole pixels, NaN where nothing moved in."""
    out = np.full(image.shape, np.nan)
    height, width = image.shape
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        image[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return out
