"""The temporal depth average: on a stereo camera's frames of a still scene, and when a carton is picked away."""

import cv2
import numpy as np
import pytest
import synthetic
from synthetic.stereo_depth import StereoCamera, stereo_frames

from box_segmentation.depth_filter import TemporalDepthAverage

FRAMES = 8


@pytest.fixture(scope="module")
def scene():
    return synthetic.render_scene(4, 640, 480, "pallet")  # cartons about 1.4 m away, seen from above


def frames_of(scene, depth_mm, count, seed=0):
    """count stereo frames (metres, NaN = none) of the scene with depth_mm as its surfaces, not misregistered."""
    frames, _ = stereo_frames(depth_mm, scene.labels, scene.top_face, scene.image, scene.camera, scene.cartons,
                              np.random.default_rng(seed), count, shift=(0, 0))
    return [np.where(frame > 0, frame / np.float32(1000), np.nan).astype(np.float32) for frame in frames]


def spread(error):
    """Robust standard deviation (mm) of the finite errors in metres."""
    error = error[np.isfinite(error)] * 1000
    return 1.4826 * np.median(np.abs(error - np.median(error)))


def eroded(mask):
    """The mask clear of its edges, where no flying pixel lands."""
    return cv2.erode(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)


def test_holes_add_nothing_and_a_pixel_needs_depth_in_half_of_its_frames():
    average = TemporalDepthAverage(4)
    frames = np.array([[1.000, np.nan, 2.0, np.nan],
                       [np.nan, np.nan, 0.0, 1.5],
                       [1.002, np.nan, 0.0, np.nan],
                       [1.004, 3.0, 0.0, np.nan]], np.float32)
    for frame in frames:
        averaged = average.add(frame[None, :])[0]
    assert averaged[0] == pytest.approx(1.002), "the mean of the frames with depth, holes left out"
    assert np.isnan(averaged[1:]).all(), "measured once in four frames: a flicker, not a surface"
    # One frame later the 1.000 has left the window, and the second pixel has depth in two of four.
    assert average.add(np.array([[1.006, 3.0, 0.0, np.nan]], np.float32))[0, :2] == pytest.approx([1.004, 3.0])


def test_depth_no_camera_measures_adds_nothing():
    """inf (REP 117's 'too far') and values outside pick_pose.DEPTH_RANGE_M are holes: one inf once entered the
    running sum and left the pixel NaN for good, after the frame had left the window too."""
    average = TemporalDepthAverage(2)
    average.add(np.array([[1.0, 1.0, 1.0]], np.float32))
    assert average.add(np.array([[np.inf, 3e38, 1e-38]], np.float32))[0] == pytest.approx([1.0, 1.0, 1.0])
    for _ in range(2):
        averaged = average.add(np.array([[1.0, 1.0, 1.0]], np.float32))[0]
    assert averaged == pytest.approx([1.0, 1.0, 1.0])


def test_a_jump_beyond_the_depth_steps_tolerance_restarts_the_pixel():
    """4 depth steps: 10 mm at 1 m, 62 mm at 2.5 m. A 20 mm jump is a scene change at 1 m, noise at 2.5 m."""
    average = TemporalDepthAverage(4)
    for _ in range(4):
        average.add(np.array([[1.0, 2.5]], np.float32))
    jumped = average.add(np.array([[1.02, 2.52]], np.float32))[0]
    assert jumped[0] == pytest.approx(1.02), "restarted from the new value, nothing of before"
    assert jumped[1] == pytest.approx((3 * 2.5 + 2.52) / 4)
    assert average.add(np.array([[1.024, 2.5]], np.float32))[0, 0] == pytest.approx(1.022), "the new surface's mean"
    with pytest.raises(ValueError, match="at least 1"):
        TemporalDepthAverage(0)


def test_averaging_a_still_scene_removes_the_noise_that_changes_between_frames(scene):
    """Two windows of the same still scene: their averages differ by far less than two single frames do (what
    stays, bulging tops and the depth grid, is the same in both)."""
    frames = frames_of(scene, scene.depth, 2 * FRAMES)
    averages = []
    for window in (frames[:FRAMES], frames[FRAMES:]):
        average = TemporalDepthAverage(FRAMES)
        for frame in window:
            averaged = average.add(frame)
        averages.append(averaged)
    tops = eroded(scene.top_face)
    single, mean = spread((frames[0] - frames[1])[tops]), spread((averages[0] - averages[1])[tops])
    assert mean < single / 2, f"{single:.1f} mm between frames, {mean:.1f} mm between averages of {FRAMES}"
    # What no frame has depth for (shadows, tape) stays without.
    never = np.logical_and.reduce([np.isnan(frame) for frame in frames[FRAMES:]])
    assert never.any() and np.isnan(averages[1][never]).all()


def test_a_carton_picked_away_shows_the_one_beneath_not_a_blend(scene):
    """Frames of the pallet, then frames with one carton gone: where it was, the carton below (its height
    further) shows at once wherever the frame measured it, never anything in between; where the new frames have
    no depth (tape) the old mean stays until its frames have left the window."""
    label = max(scene.visible_labels(), key=lambda k: np.count_nonzero(scene.top_face & (scene.labels == k)))
    picked = scene.top_face & (scene.labels == label)
    height_mm = scene.cartons[label - 1].size[2] * 1000
    below = np.where(picked, scene.depth + np.uint16(round(height_mm)), scene.depth).astype(np.uint16)
    average = TemporalDepthAverage(FRAMES)
    for frame in frames_of(scene, scene.depth, FRAMES):
        before = average.add(frame)
    inside = eroded(picked)
    others = eroded(scene.top_face & ~picked)
    tolerance = 4 * StereoCamera().depth_step(1.6)  # the carton below is about 1.6 m away
    for k, frame in enumerate(frames_of(scene, below, FRAMES, seed=1)):
        averaged = average.add(frame)
        measured = inside & np.isfinite(frame) & np.isfinite(before)  # (not the rare flicker on dark print)
        error = (averaged - below / 1000.0)[measured]
        assert np.isfinite(error).mean() > 0.9 and np.nanmax(np.abs(error)) < tolerance, f"frame {k}"
        if k == 0:
            np.testing.assert_array_equal(averaged[measured], frame[measured], "restarted: this frame's depth")
            kept = np.isfinite(before[others])
            assert np.isfinite(averaged[others][kept]).mean() > 0.99, "the rest of the pallet keeps its average..."
            assert np.nanmedian(np.abs(averaged - before)[others]) < 0.001, "...give or take this frame's share"
    error = (averaged - below / 1000.0)[inside]
    assert np.nanmax(np.abs(error)) < tolerance, "the picked carton's frames have all left the window"
    assert spread(error) < spread((frame - below / 1000.0)[inside]) / 2, "the new surface's average"
