"""The colour-depth registration check against stereo depth shifted by known offsets."""

import math

import numpy as np
import pytest
import synthetic
from synthetic.stereo_depth import stereo_depth
from test_pick_pose import instance_of

from box_segmentation.registration import RegistrationCheck

SCENES = [("pallet", 4), ("loose", 25)]  # cartons at about 1.5 m, seen from above, 640x480


@pytest.fixture(scope="module")
def scenes():
    found = []
    for kind, seed in SCENES:
        scene = synthetic.render_scene(seed, 640, 480, kind)
        found.append((scene, [instance_of(scene.labels == label) for label in scene.visible_labels()]))
    return found


def checked(scenes, shift, hole=0.0):
    """The offset found in the scenes' stereo depth shifted by `shift`, its holes `hole` metres."""
    check = RegistrationCheck()
    for index, (scene, instances) in enumerate(scenes):
        depth_mm, _ = stereo_depth(scene.depth, scene.labels, scene.top_face, scene.image, scene.camera,
                                   scene.cartons, np.random.default_rng(index), shift=shift)
        check.add(instances, np.where(depth_mm > 0, depth_mm / np.float32(1000), np.float32(hole)))
    return check.offset()


@pytest.mark.parametrize("shift", [(3, 0), (0, -3), (-2, 2)])
def test_a_shifted_depth_image_is_found(scenes, shift):
    offset = checked(scenes, shift)
    assert offset is not None
    np.testing.assert_allclose(offset, shift, atol=0.5)
    assert math.hypot(*offset) > 2, "above the warning threshold"


@pytest.mark.parametrize("hole", [np.nan, np.inf, 3e38])
def test_holes_given_as_nan_inf_or_garbage_are_holes(scenes, hole):
    # inf (REP 117's 'too far') once filled the holes beside depth edges with inf, and moved the edges.
    assert checked(scenes, (3, 0), hole) == checked(scenes, (3, 0))


def test_registered_depth_stays_quiet(scenes):
    offset = checked(scenes, (0, 0))
    assert offset is not None and math.hypot(*offset) < 0.5


def test_no_depth_edges_means_no_estimate(scenes):
    scene, instances = scenes[0]
    check = RegistrationCheck()
    assert check.offset() is None, "nothing added yet"
    check.add(instances, np.full(scene.depth.shape, 1.5, np.float32))  # a flat wall: masks cross no depth edge
    check.add(instances, np.full(scene.depth.shape, np.nan, np.float32))  # no depth at all
    assert check.offset() is None


def test_only_every_nth_frame_is_scored_and_old_frames_leave(scenes):
    scene, instances = scenes[0]
    depth = scene.depth.astype(np.float32) / 1000
    check = RegistrationCheck(frames=2, every=3)
    for _ in range(3):  # frames 1 and 4 of these scored... frame 1 here
        check.add(instances, np.roll(depth, 3, axis=1))
    assert check.offset()[0] == pytest.approx(3, abs=0.5)
    for _ in range(6):  # two more scored frames, registered: the shifted one has left the window
        check.add(instances, depth)
    assert math.hypot(*check.offset()) < 0.5


def test_corrected_moves_the_depth_back_onto_the_colour_image(scenes):
    scene, instances = scenes[0]
    depth = scene.depth.astype(np.float32) / 1000
    check = RegistrationCheck()
    assert check.corrected(depth) is depth, "nothing known yet: as is"
    shifted = np.full(depth.shape, np.nan, np.float32)
    shifted[3:, :-2] = depth[:-3, 2:]  # 2 px left and 3 down
    check.add(instances, shifted)
    np.testing.assert_allclose(check.offset(), (-2, 3), atol=0.5)
    np.testing.assert_array_equal(check.corrected(shifted)[3:-3, 2:-2], depth[3:-3, 2:-2])
