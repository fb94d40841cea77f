"""The stereo depth model: what it does to a scene's exact depth, measured on the depth it returns."""

import math

import cv2
import numpy as np
import pytest
import synthetic
from synthetic.stereo_depth import StereoCamera, stereo_depth, stereo_frames


@pytest.fixture(scope="module")
def scene():
    return synthetic.render_scene(4, 640, 480, "pallet")  # cartons about 1.4 m away, seen from above


def measured(scene, stereo=None, shift=(0, 0), seed=0):
    depth_mm, applied = stereo_depth(scene.depth, scene.labels, scene.top_face, scene.image, scene.camera,
                                     scene.cartons, np.random.default_rng(seed), stereo or StereoCamera(), shift)
    return depth_mm, applied


def inner_tops(scene):
    """Top-face pixels clear of every edge, where no flying pixel lands."""
    return cv2.erode(scene.top_face.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)


def test_depth_is_quantised_in_disparity(scene):
    stereo = StereoCamera()
    clean, (depth_mm, _) = scene.depth, measured(scene, stereo)
    band = inner_tops(scene) & (clean >= 1300) & (clean < 1500) & (depth_mm > 0)
    # Whole disparity steps between 1.3 and 1.5 m: f B (1/1.3 - 1/1.5) / subpixel, about 41 depth values.
    steps = stereo.focal_px * stereo.baseline * (1 / 1.3 - 1 / 1.5) / stereo.subpixel
    assert np.count_nonzero(np.unique(clean[band])) > 2 * steps, "the scene's own depths are finer"
    assert len(np.unique(depth_mm[band])) <= steps + 6
    assert stereo.depth_step(1.0) == pytest.approx(0.0025) and stereo.depth_step(2.5) == pytest.approx(0.015625)


def test_noise_is_a_few_millimetres_at_1_5_m_and_correlated(scene):
    clean = scene.depth.astype(np.float64)
    noisy, _ = measured(scene)
    tops = inner_tops(scene) & (noisy > 0) & (np.abs(clean - 1500) < 150)
    error = np.where(tops, noisy - clean, np.nan)
    spread = 1.4826 * np.nanmedian(np.abs(error - np.nanmedian(error)))
    assert 2 < spread < 8, f"{spread:.1f} mm"
    both = tops[:, :-1] & tops[:, 1:]
    neighbours = np.corrcoef(error[:, :-1][both], error[:, 1:][both])[0, 1]
    assert neighbours > 0.5, "neighbouring pixels err together, as block matching makes them"


def test_edges_lose_depth_or_fly_and_tops_bulge(scene):
    clean = scene.depth.astype(np.float64)
    noisy, _ = measured(scene, StereoCamera(noise_px=0.0, subpixel=1e-3))
    jump = np.zeros(clean.shape, bool)
    jump[:, 1:] = np.abs(np.diff(clean, axis=1)) > 100
    edge_band = jump | np.roll(jump, -1, axis=1)
    assert np.mean(noisy[edge_band] == 0) > 0.1, "shadows and holes along depth edges"
    between = (noisy > 0) & edge_band & (np.abs(noisy - clean) > 30)
    assert between.any(), "flying pixels: depths between the near and the far surface"
    tops = scene.top_face & (noisy > 0)
    assert 0.5 < np.percentile(np.abs(noisy - clean)[tops], 90) < 8, "tops bulge or sag by a few millimetres"


def test_misregistration_shifts_the_depth_image(scene):
    straight, _ = measured(scene, shift=(0, 0))
    shifted, applied = measured(scene, shift=(3, -2))
    assert applied == (3, -2)
    np.testing.assert_array_equal(shifted[:-2 or None, 3:][:, :], straight[2:, :-3])
    _, random_shift = measured(scene, shift=None, seed=5)
    assert 1 <= math.hypot(*random_shift) <= 4.5


def test_frames_of_a_still_scene_share_the_scene_and_calibration_not_the_noise(scene):
    """stereo_frames: its first frame is stereo_depth's; the imagers' noise is drawn anew per frame (each frame's
    errors correlated among neighbours, not with the other frames'), the geometry's errors are the same in all."""
    arguments = (scene.depth, scene.labels, scene.top_face, scene.image, scene.camera, scene.cartons)
    single, shift = stereo_depth(*arguments, np.random.default_rng(3))
    frames, same_shift = stereo_frames(*arguments, np.random.default_rng(3), 4)
    assert same_shift == shift and len(frames) == 4
    np.testing.assert_array_equal(frames[0], single)

    flat = StereoCamera(bulge_mm=(0.0, 0.0))  # errors of the noise alone
    frames, _ = stereo_frames(*arguments, np.random.default_rng(3), 4, flat, shift=(0, 0))
    clean = scene.depth.astype(np.float64)
    tops = inner_tops(scene) & np.logical_and.reduce([frame > 0 for frame in frames]) & (clean > 0)
    errors = [frame[tops] - clean[tops] for frame in frames]
    between = np.corrcoef(errors)[np.triu_indices(4, 1)]
    assert np.abs(between).max() < 0.2, f"frames' errors correlate: {between}"
    for frame in frames:
        error = np.where(tops, frame - clean, np.nan)
        both = tops[:, :-1] & tops[:, 1:]
        assert np.corrcoef(error[:, :-1][both], error[:, 1:][both])[0, 1] > 0.5, "each frame's own noise smooth"
    holes = [frame == 0 for frame in frames]
    always = np.logical_and.reduce(holes)
    assert always.sum() > 0.8 * holes[0].sum(), "shadows and tape lose depth in every frame"
    assert all((h != holes[0]).any() for h in holes[1:]), "dark surfaces and speckle flicker"
