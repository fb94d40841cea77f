"""Pick poses from aligned depth against the synthetic scenes' 3D truth: pick points, normals, top sizes,
flags for bad depth, pick order, depth units and size checks."""

import math

import cv2
import numpy as np
import pytest
import synthetic
from rclpy.serialization import deserialize_message, serialize_message
from synthetic.stereo_depth import stereo_depth, stereo_frames

from box_segmentation import pick_pose
from box_segmentation.depth_filter import TemporalDepthAverage
from box_segmentation.masks import BoxCrop, describe
from box_segmentation.messages import add_poses, to_box_masks
from box_segmentation.msg import BoxMask, BoxMasks
from box_segmentation.pick_pose import (
    CartonPose,
    Intrinsics,
    PoseParams,
    PoseStatus,
    depth_to_metres,
    estimate_poses,
    pick_order,
    quaternion_from_matrix,
)
from box_segmentation.registration import RegistrationCheck
from box_segmentation.types import Instance

WIDTH, HEIGHT = 320, 240
SEEDS = {"pallet": [2, 11], "loose": [1, 6], "trunk": [5]}  # a few of each, top layers and piles
BOUNDS = {"position": 0.01, "normal_deg": 2.0, "size": 0.015}  # clean depth; twice these with sensor noise


def scene_and_instances(seed, kind):
    scene = synthetic.render_scene(seed, WIDTH, HEIGHT, kind)
    labels = scene.visible_labels()
    return scene, labels, [instance_of(scene.labels == label) for label in labels]


def instance_of(mask, x_offset=0, y_offset=0):
    """A segmenter Instance with the true mask, as if the model found it exactly."""
    shape = describe(BoxCrop(x_offset, y_offset, mask.astype(np.uint8)))
    x, y, w, h = shape.roi
    return Instance(box=(x, y, x + w, y + h), score=1.0, class_id=1, class_name="carton", roi=shape.roi,
                    mask=shape.mask, area=shape.area, centroid=shape.centroid, rotated_rect=shape.rotated_rect)


def intrinsics(scene):
    return Intrinsics(scene.camera.fx, scene.camera.fy, scene.camera.cx, scene.camera.cy)


def up_in_camera(scene):
    return scene.camera.rotation[:, 2]  # world z seen from the camera, as TF would give it


def top_face_well_seen(scene, label):
    """The whole top face in view and unoccluded, at least 150 pixels, seen within 60 degrees of square-on:
    where a pixel-sized footprint allows centimetre sizes."""
    carton, camera = scene.cartons[label - 1], scene.camera
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * carton.size[:2] / 2
    corners = carton.top_center + half @ carton.rotation[:, :2].T
    uv = corners[:, :2] / corners[:, 2:] * [camera.fx, camera.fy] + [camera.cx, camera.cy]
    if (uv < 0).any() or (uv[:, 0] > camera.width - 1).any() or (uv[:, 1] > camera.height - 1).any():
        return False
    drawn = np.zeros((camera.height, camera.width), np.uint8)
    cv2.fillConvexPoly(drawn, np.round(uv * 16).astype(np.int32), 1, shift=4)
    inside = cv2.erode(drawn, np.ones((3, 3), np.uint8)).astype(bool)  # clear of rounding at the outline
    seen = scene.top_face & (scene.labels == label)
    facing = -carton.top_normal @ carton.top_center / np.linalg.norm(carton.top_center)
    return (np.count_nonzero(seen) >= 150 and np.count_nonzero(inside & ~seen) <= 0.01 * np.count_nonzero(inside)
            and facing >= math.cos(math.radians(60)))


def errors(pose, carton):
    length, width = carton.size[:2]
    return {"position": np.linalg.norm(pose.position - carton.top_center),
            "normal_deg": math.degrees(math.acos(min(1.0, pose.normal @ carton.top_normal))),
            "size": max(abs(pose.length - length), abs(pose.width - width))}


def with_sensor_noise(depth_m, labels, rng):
    """Like a stereo camera: noise growing with depth squared (2 mm at 1 m, 5 mm at 2 m), 1 % dropout, and
    depth missing along occlusion edges (a band, plus blobs) where the two views see different things."""
    noisy = depth_m + rng.normal(size=depth_m.shape).astype(np.float32) * (0.001 + 0.001 * depth_m ** 2)
    edges = np.zeros(depth_m.shape, np.uint8)
    for axis in (0, 1):
        jump = (np.diff(labels, axis=axis) != 0) & (np.abs(np.diff(depth_m, axis=axis)) > 0.03)
        edges[tuple(slice(1, None) if a == axis else slice(None) for a in (0, 1))] |= jump
    missing = cv2.dilate(edges, np.ones((3, 3), np.uint8))
    rows, cols = np.nonzero(edges)
    for k in rng.choice(len(rows), min(len(rows), 40), replace=False):
        cv2.circle(missing, (int(cols[k]), int(rows[k])), int(rng.integers(2, 6)), 1, -1)
    noisy[missing.astype(bool) | (rng.random(depth_m.shape) < 0.01)] = np.nan
    return noisy


def pose_errors(noise_seed=None):
    """Errors of every well-seen carton in the test scenes, as (kind, seed, label, errors)."""
    found = []
    for kind, seeds in SEEDS.items():
        for seed in seeds:
            scene, labels, instances = scene_and_instances(seed, kind)
            depth = scene.depth.astype(np.float32) / 1000
            if noise_seed is not None:
                depth = with_sensor_noise(depth, scene.labels, np.random.default_rng(noise_seed + seed))
            poses = estimate_poses(instances, depth, intrinsics(scene), up=up_in_camera(scene))
            for label, pose in zip(labels, poses, strict=True):
                if top_face_well_seen(scene, label):
                    assert pose.status == PoseStatus.OK, (kind, seed, label, pose)
                    found.append((kind, seed, label, errors(pose, scene.cartons[label - 1])))
    return found


def assert_within(found, scale):
    assert len(found) >= 10, "the test scenes should show enough well-seen cartons"
    for name, bound in BOUNDS.items():
        worst = max(found, key=lambda entry: entry[3][name])
        assert worst[3][name] <= scale * bound, f"{name}: {worst}"


def test_poses_match_the_true_cartons():
    assert_within(pose_errors(), 1)


def test_poses_with_sensor_noise_and_holes_stay_within_twice_the_bounds():
    assert_within(pose_errors(noise_seed=100), 2)


# Scenes of the generator whose carton tops lie at about these distances from a camera looking down
# (median depth of their half-seen tops within 20 %), at the field camera's 640x480: the first by seed (loose
# before pallet) that show a well-seen top at that distance, until at least 20 (30 at 2.5 m) such tops.
STEREO_SCENES = {1.0: [("pallet", 2), ("loose", 6), ("pallet", 11), ("loose", 13), ("pallet", 19), ("loose", 21),
                       ("loose", 22), ("loose", 26)],
                 1.5: [("loose", 2), ("pallet", 3), ("pallet", 4), ("loose", 8), ("loose", 14)],
                 2.5: [("loose", 4), ("pallet", 5), ("loose", 19), ("loose", 20), ("loose", 23), ("loose", 27),
                       ("loose", 30), ("pallet", 30), ("loose", 31)]}
# Share of the well-seen cartons at that distance within BOUNDS_STEREO. Issue 17 asks 0.95 everywhere. At 2.5 m
# (4.5 mm pixels, 15.6 mm depth steps, 9.8 mm of correlated noise) this fit gets about 88 % of the 137 well-seen
# tops of all 42 scenes of seeds 0-159 (python test/test_pick_pose.py --all-seeds): a plane fitted to the true
# top pixels alone gets 81 % of the normals within 3 degrees, and with the true side pixels held square to it
# 90 %, the noise floor of one frame; the rest are tops widened by a side's first pixels past the crease, which
# lie within a depth step of the top.
ACCURATE_SHARE = {1.0: 0.95, 1.5: 0.95, 2.5: 0.85}
# What a depalletising cell does about that floor: the pallet holds still between picks and the noise changes from
# frame to frame, so the node averages depth frames (depth_average_frames). Over those 137 tops one frame gets 120
# within BOUNDS_STEREO, the average of 2 frames 130, of 3 133, of 4 136, of 6 135, of 8 136: the 95 % from
# 3 frames on. The tests take 4 (0.13 s of a 30 Hz camera), one frame of margin.
AVERAGED_FRAMES = 4
BOUNDS_STEREO = {"position": 0.015, "normal_deg": 3.0, "size": 0.015}


def top_share_seen(scene, label):
    """Share of a carton's whole top face (projected) that the image shows of it."""
    carton, camera = scene.cartons[label - 1], scene.camera
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * carton.size[:2] / 2
    corners = carton.top_center + half @ carton.rotation[:, :2].T
    uv = corners[:, :2] / corners[:, 2:] * [camera.fx, camera.fy] + [camera.cx, camera.cy]
    seen = np.count_nonzero(scene.top_face & (scene.labels == label))
    return seen / cv2.contourArea(uv.astype(np.float32))


def stereo_results(distance, scenes=None, frames=1):
    """(half-seen tops, OK among them, errors of each well-seen carton at that distance (within 20 %) or None
    without an OK pose) over the scenes at `distance` (STEREO_SCENES's unless given) on quantised, correlated,
    holed, flying, bulging and 1-4 px misregistered depth: one frame, or the temporal average of `frames` frames
    of the scene standing still (the first of them that one frame)."""
    half_seen, ok, found = 0, 0, []
    for kind, seed in STEREO_SCENES[distance] if scenes is None else scenes:
        scene = synthetic.render_scene(seed, 640, 480, kind)
        labels = scene.visible_labels()
        tops = [scene.cartons[label - 1].top_center[2] for label in labels if top_share_seen(scene, label) >= 0.5]
        assert abs(np.median(tops) / distance - 1) < 0.2, (kind, seed, np.median(tops))
        depth = averaged_stereo_depth(scene, seed, frames)
        instances = [instance_of(scene.labels == label) for label in labels]
        # As the node does: the registration check's offset (from this frame alone here) moved back.
        registration = RegistrationCheck()
        registration.add(instances, depth)
        depth = registration.corrected(depth)
        poses = estimate_poses(instances, depth, intrinsics(scene), up=up_in_camera(scene))
        for label, pose in zip(labels, poses, strict=True):
            if top_share_seen(scene, label) >= 0.5:
                half_seen += 1
                ok += pose.status == PoseStatus.OK
            if top_face_well_seen(scene, label) and abs(scene.cartons[label - 1].top_center[2] / distance - 1) < 0.2:
                found.append(errors(pose, scene.cartons[label - 1]) if pose.status == PoseStatus.OK else None)
    return half_seen, ok, found


def averaged_stereo_depth(scene, seed, frames):
    """Metres (NaN = none) of `frames` stereo frames of the scene through the node's temporal average."""
    depth_mm, _ = stereo_frames(scene.depth, scene.labels, scene.top_face, scene.image, scene.camera, scene.cartons,
                                np.random.default_rng(seed), frames)
    average = TemporalDepthAverage(frames)
    for frame in depth_mm:
        depth = average.add(frame / np.float32(1000))
    return depth


def within(found, bounds):
    return [e for e in found if e is not None and all(e[name] <= bound for name, bound in bounds.items())]


@pytest.mark.parametrize("distance", sorted(STEREO_SCENES))
def test_poses_hold_on_a_stereo_cameras_depth(distance):
    """At least half-seen tops get an OK pose; well-seen ones their true pick point, normal and size."""
    half_seen, ok, found = stereo_results(distance)
    assert half_seen >= 20 and len(found) >= 20
    assert ok >= 0.95 * half_seen, f"{ok} of {half_seen} half-seen tops OK"
    accurate = within(found, BOUNDS_STEREO)
    assert len(accurate) >= ACCURATE_SHARE[distance] * len(found), f"{len(accurate)} of {len(found)}: {found}"


@pytest.mark.parametrize("distance", sorted(STEREO_SCENES))
def test_poses_hold_on_a_stereo_cameras_depth_averaged_over_frames(distance):
    """The same scenes and camera errors, the depth averaged over AVERAGED_FRAMES frames: the issue's 95 % at every
    distance, 2.5 m included."""
    half_seen, ok, found = stereo_results(distance, frames=AVERAGED_FRAMES)
    assert half_seen >= 20 and len(found) >= 20
    assert ok >= 0.95 * half_seen, f"{ok} of {half_seen} half-seen tops OK"
    accurate = within(found, BOUNDS_STEREO)
    assert len(accurate) >= 0.95 * len(found), f"{len(accurate)} of {len(found)}: {found}"


def test_a_top_face_of_spurs_alone_is_a_poor_fit():
    """Carton 18 of this far, uncorrected frame shows its top plane only in strips under 3 px across, which the
    opening removes: POOR_FIT for it (this once raised IndexError and lost the frame's poses)."""
    scene = synthetic.render_scene(41, 640, 480, "loose")
    depth_mm, _ = stereo_depth(scene.depth, scene.labels, scene.top_face, scene.image, scene.camera, scene.cartons,
                               np.random.default_rng(41))
    spurs, = estimate_poses([instance_of(scene.labels == 18)], depth_mm / np.float32(1000), intrinsics(scene),
                            up=up_in_camera(scene))
    assert spurs.status == PoseStatus.POOR_FIT and spurs.quality > PoseParams().min_quality


def test_lens_distortion_is_undone_before_back_projection():
    """A flat top seen near the corner of a wide lens: measured with K and D it has its true size; read as
    a pinhole (ignoring D), several centimetres off."""
    width, height, k, d = 640, 480, (520.0, 520.0, 318.0, 243.0), (-0.3, 0.12, 0.0, 0.0, -0.02)
    camera = Intrinsics(*k, "plumb_bob", d, width, height)
    # The top: 40 x 30 cm, level, 1.2 m from the camera, its centre off the axis by 0.45 and 0.3 m.
    v, u = np.mgrid[:height, :width]
    x, y = camera.normalised(u, v)
    depth = np.full((height, width), 1.2, np.float32)
    on_top = (np.abs(x * 1.2 - 0.45) <= 0.2) & (np.abs(y * 1.2 - 0.3) <= 0.15)
    depth[~on_top] = 1.6  # the floor
    top = instance_of(on_top)
    distorted, = estimate_poses([top], depth, camera, up=(0, 0, -1))
    assert distorted.status == PoseStatus.OK
    np.testing.assert_allclose(distorted.position, [0.45, 0.3, 1.2], atol=0.005)
    assert distorted.length == pytest.approx(0.4, abs=0.006) and distorted.width == pytest.approx(0.3, abs=0.006)
    pinhole, = estimate_poses([top], depth, Intrinsics(*k), up=(0, 0, -1))
    assert abs(pinhole.length - 0.4) > 0.02 or abs(pinhole.width - 0.3) > 0.02


def test_lens_distortion_tilted_top_fits_on_true_points():
    """The fitting points too are back-projected through each pixel's own undistorted ray: a top tilted 20
    degrees near a wide lens' corner has its true normal (with the rays of the window's first row, its points
    fitted no plane near its own, and it had no top face)."""
    width, height, k, d = 640, 480, (520.0, 520.0, 318.0, 243.0), (-0.3, 0.12, 0.0, 0.0, -0.02)
    camera = Intrinsics(*k, "plumb_bob", d, width, height)
    tilt = math.radians(20)
    normal, centre = np.array([0.0, -math.sin(tilt), -math.cos(tilt)]), np.array([0.45, 0.3, 1.2])
    v, u = np.mgrid[:height, :width]
    x, y = camera.normalised(u, v)
    z = (normal @ centre) / (normal[0] * x + normal[1] * y + normal[2])
    from_centre = np.stack([x * z, y * z, z], axis=-1) - centre
    on_top = (np.abs(from_centre[..., 0]) <= 0.2) & (np.abs(from_centre @ np.cross(normal, [1.0, 0.0, 0.0])) <= 0.15)
    pose, = estimate_poses([instance_of(on_top)], np.where(on_top, z, 1.6).astype(np.float32), camera,
                           up=(0, 0, -1))
    assert pose.status == PoseStatus.OK
    assert math.degrees(math.acos(min(1.0, pose.normal @ normal))) < 0.5
    np.testing.assert_allclose(pose.position, centre, atol=0.005)
    assert pose.length == pytest.approx(0.4, abs=0.006) and pose.width == pytest.approx(0.3, abs=0.006)

def level_top(camera):
    """Depth of a 40 x 30 cm level top 1.2 m below a camera looking straight down at it, over a floor at 1.6 m,
    and the top's pixels."""
    v, u = np.mgrid[:480, :640]
    x, y = camera.normalised(u, v)
    on_top = (np.abs(x * 1.2) <= 0.2) & (np.abs(y * 1.2) <= 0.15)
    return np.where(on_top, 1.2, 1.6).astype(np.float32), on_top


def test_a_top_that_fills_its_mask_box_keeps_its_edges():
    """An axis-aligned top's outline is its mask's window's edge, which is still the face's edge."""
    camera = Intrinsics(520.0, 520.0, 318.0, 243.0)
    depth, on_top = level_top(camera)
    pose, = estimate_poses([instance_of(on_top)], depth, camera, up=(0, 0, -1))
    assert pose.status == PoseStatus.OK
    assert pose.length == pytest.approx(0.4, abs=0.004) and pose.width == pytest.approx(0.3, abs=0.004)


def test_spurs_a_pixel_or_two_across_do_not_widen_the_top():
    """Flying pixels and depth steps along a crease leave thin spurs at the top's depth past its edge: the
    rectangle is the face's, not the spurs'."""
    camera = Intrinsics(520.0, 520.0, 318.0, 243.0)
    depth, on_top = level_top(camera)
    right, bottom = np.nonzero(on_top)[1].max(), np.nonzero(on_top)[0].max()
    spurs = np.zeros_like(on_top)
    spurs[240, right + 1:right + 11] = True  # one pixel across, ten long
    spurs[bottom + 1:bottom + 9, 300:302] = True  # two across, eight long
    depth[spurs] = 1.2
    pose, = estimate_poses([instance_of(on_top | spurs)], depth, camera, up=(0, 0, -1))
    assert pose.status == PoseStatus.OK
    assert pose.length == pytest.approx(0.4, abs=0.004) and pose.width == pytest.approx(0.3, abs=0.004)
    np.testing.assert_allclose(pose.position, [0, 0, 1.2], atol=0.003)


def test_without_up_a_camera_looking_down_finds_the_same_top_faces():
    scene, labels, instances = scene_and_instances(2, "pallet")  # camera 78 degrees above the horizon
    depth = scene.depth.astype(np.float32) / 1000
    guessed = estimate_poses(instances, depth, intrinsics(scene))
    told = estimate_poses(instances, depth, intrinsics(scene), up=up_in_camera(scene))
    assert sum(pose.status == PoseStatus.OK for pose in told) >= 5
    for without, given in zip(guessed, told, strict=True):
        if given.status == PoseStatus.OK:  # (a carton showing only a side reports that side without up)
            assert without.status == PoseStatus.OK
            np.testing.assert_allclose(without.position, given.position, atol=1e-6)


def test_bad_depth_is_flagged_not_guessed():
    scene, labels, instances = scene_and_instances(11, "pallet")
    depth = scene.depth.astype(np.float32) / 1000
    rng = np.random.default_rng(0)
    sparse, noisy = (scene.labels == labels[k] for k in (0, 1))
    depth[sparse & (rng.random(depth.shape) < 0.97)] = 0  # almost all depth gone
    depth[noisy] += rng.uniform(-0.3, 0.3, np.count_nonzero(noisy))  # depth that is no surface
    poses = estimate_poses(instances, depth, intrinsics(scene), up=up_in_camera(scene))
    assert poses[0].status == PoseStatus.SPARSE_DEPTH and poses[0].position is None
    assert poses[1].status == PoseStatus.POOR_FIT and poses[1].quality < PoseParams().min_quality
    assert all(pose.status == PoseStatus.OK for pose in poses[2:] if pose.points > 2000)
    # Gravity pointing into the floor: no face of any carton is a top face.
    upside_down = estimate_poses(instances, depth, intrinsics(scene), up=-up_in_camera(scene))
    assert all(flipped.status == PoseStatus.NO_TOP_FACE
               for flipped, pose in zip(upside_down, poses, strict=True) if pose.status == PoseStatus.OK)


@pytest.mark.parametrize(("seed", "kind", "garbage", "wide_angle"), [
    (5, "trunk", 1e-38, False),  # once an OK pose of NaNs
    (11, "pallet", 3e38, True),  # points past float32's range on rays past 45 degrees: once LinAlgError, no poses
])
def test_depth_no_camera_measures_is_missing(seed, kind, garbage, wide_angle):
    """A float depth image's values outside DEPTH_RANGE_M (a broken driver's, a bad bag's) count as missing, in
    estimate_poses as in depth_to_metres: the poses are those of the same depth with NaN there."""
    scene, _, instances = scene_and_instances(seed, kind)
    camera = intrinsics(scene)
    if wide_angle:  # the same pixels seen through a lens four times as wide
        camera = Intrinsics(camera.fx / 4, camera.fy / 4, camera.cx, camera.cy)
    depth = scene.depth.astype(np.float32) / 1000
    missing = depth.copy()
    depth[:, int(0.7 * WIDTH):] = garbage
    missing[:, int(0.7 * WIDTH):] = np.nan
    poses = estimate_poses(instances, depth, camera, up=up_in_camera(scene))
    expected = estimate_poses(instances, missing, camera, up=up_in_camera(scene))
    assert any(pose.status == PoseStatus.OK for pose in expected)
    for pose, same in zip(poses, expected, strict=True):
        assert pose.status == same.status and pose.points == same.points
        if pose.status == PoseStatus.OK:
            np.testing.assert_array_equal(pose.position, same.position)
    np.testing.assert_array_equal(depth_to_metres(depth, "32FC1", (HEIGHT, WIDTH)), missing)


def test_pose_orientation_is_the_face_normal_and_long_edge():
    scene, labels, instances = scene_and_instances(11, "pallet")
    poses = estimate_poses(instances, scene.depth / 1000.0, intrinsics(scene), up=up_in_camera(scene))
    for pose in poses:
        if pose.status != PoseStatus.OK:
            continue
        np.testing.assert_allclose(pose.rotation.T @ pose.rotation, np.eye(3), atol=1e-9)
        assert np.linalg.det(pose.rotation) == pytest.approx(1)
        assert pose.normal @ pose.position < 0, "the normal points toward the camera"
        assert pose.rotation[0, 0] >= 0 and pose.length >= pose.width
        np.testing.assert_allclose(matrix_from_quaternion(pose.quaternion), pose.rotation, atol=1e-9)


def matrix_from_quaternion(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_quaternion_from_matrix_round_trips_every_branch():
    rng = np.random.default_rng(0)
    turns = [np.diag(d) for d in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1])]  # each largest term
    for _ in range(20):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        turns.append(q * np.sign(np.diag(r)) * np.sign(np.linalg.det(q * np.sign(np.diag(r)))))
    for rotation in turns:
        quaternion = quaternion_from_matrix(rotation)
        assert np.linalg.norm(quaternion) == pytest.approx(1)
        np.testing.assert_allclose(matrix_from_quaternion(quaternion), rotation, atol=1e-9)


@pytest.mark.parametrize(("seed", "told_up"), [(13, True), (16, True), (20, True), (2, False)])
def test_pick_order_takes_the_top_layer_first(seed, told_up):
    """Given up (from TF), or estimated from the top faces when the camera looks down (scene 2)."""
    scene, labels, instances = scene_and_instances(seed, "pallet")
    up = up_in_camera(scene) if told_up else None
    poses = estimate_poses(instances, scene.depth.astype(np.float32) / 1000, intrinsics(scene), up=up)
    order = pick_order(instances, poses, (HEIGHT, WIDTH), up=up)
    assert sorted(order) == list(range(len(instances)))
    truth = np.array([scene.cartons[label - 1].top_center @ up_in_camera(scene) for label in labels])
    posed = [k for k in order if poses[k].status == PoseStatus.OK]
    assert order[:len(posed)] == posed, "cartons without a pose come last"
    in_top_layer = [truth[k] >= truth[posed].max() - 0.05 for k in posed]
    assert 0 < sum(in_top_layer) < len(posed), "the scene should show more than one layer"
    assert all(in_top_layer[:sum(in_top_layer)]), "every top-layer carton before any lower one"


def rectangle(x, y, w, h):
    return instance_of(np.ones((h, w), bool), x, y)


def flat_pose(height):
    """An OK pose whose top is `height` metres up (up = -z: a camera looking straight down)."""
    return CartonPose(PoseStatus.OK, 1.0, 1000, position=np.array([0.0, 0.0, 2.0 - height]),
                      rotation=np.diag([1.0, -1.0, -1.0]), length=0.4, width=0.3)


def test_pick_order_prefers_uncovered_cartons_with_free_sides():
    # A row of four level cartons 0 1 2 4; 3 below 1 and 3 cm higher (same layer); 5 apart, without a pose.
    instances = [rectangle(10, 10, 20, 20), rectangle(30, 10, 20, 20), rectangle(50, 10, 20, 20),
                 rectangle(30, 30, 20, 20), rectangle(70, 10, 20, 20), rectangle(10, 50, 20, 20)]
    poses = [flat_pose(1.0), flat_pose(1.0), flat_pose(1.0), flat_pose(1.03), flat_pose(1.0),
             CartonPose(PoseStatus.SPARSE_DEPTH)]
    order = pick_order(instances, poses, (80, 100), up=(0, 0, -1))
    assert order[0] == 3, "free on every side"
    assert set(order[1:3]) == {0, 4}, "the row's ends: three sides free"
    assert order[3:] == [2, 1, 5], "2 is flanked on two sides, 1 lies beside the higher 3, 5 has no pose"


def test_depth_to_metres_units_and_missing_values():
    millimetres = np.array([[0, 1000], [1234, 65535]], np.uint16)
    metres = depth_to_metres(millimetres, "16UC1", (2, 2))
    assert metres.dtype == np.float32 and np.isnan(metres[0, 0])
    np.testing.assert_allclose(metres[[0, 1, 1], [1, 0, 1]], [1.0, 1.234, 65.535], rtol=1e-6)
    np.testing.assert_allclose(depth_to_metres(millimetres, "16UC1", (2, 2), divisor=10000)[0, 1], 0.1)
    floats = np.array([[0.0, 1.5], [np.nan, np.inf]], np.float32)
    metres = depth_to_metres(floats, "32FC1", (2, 2))
    assert metres[0, 1] == 1.5 and np.isnan(metres[[0, 1, 1], [0, 0, 1]]).all()
    assert floats[0, 0] == 0, "the input is left alone"
    # No camera measures under a millimetre or beyond a kilometre: garbage, so missing (DEPTH_RANGE_M).
    extremes = np.array([[1e-38, 0.001, 1000.0, 3e38]], np.float32)
    np.testing.assert_array_equal(depth_to_metres(extremes, "32FC1", (1, 4)),
                                  np.float32([[np.nan, 0.001, 1000.0, np.nan]]))
    np.testing.assert_array_equal(depth_to_metres(np.array([[1]], np.uint16), "16UC1", (1, 1)), np.float32([[0.001]]))
    with pytest.raises(ValueError, match="8UC1"):
        depth_to_metres(millimetres, "8UC1", (2, 2))


def test_depth_of_another_size_names_both_sizes():
    with pytest.raises(ValueError, match=r"depth image is 640x480 but the colour image is 1280x720"):
        depth_to_metres(np.zeros((480, 640), np.uint16), "16UC1", (720, 1280))


def test_poses_fill_the_box_masks_message():
    scene, labels, instances = scene_and_instances(11, "pallet")
    depth = scene.depth.astype(np.float32) / 1000
    depth[scene.labels == labels[0]] = np.nan  # one carton without depth
    poses = estimate_poses(instances, depth, intrinsics(scene), up=up_in_camera(scene))
    order = pick_order(instances, poses, (HEIGHT, WIDTH), up=up_in_camera(scene))
    header = BoxMasks().header
    untouched = to_box_masks(instances, header, HEIGHT, WIDTH)
    assert {box.pose_status for box in untouched.boxes} == {BoxMask.POSE_NONE}
    msg = deserialize_message(serialize_message(add_poses(to_box_masks(instances, header, HEIGHT, WIDTH), poses,
                                                          order)), BoxMasks)
    assert [msg.boxes[index].pick_rank for index in order] == list(range(len(order)))
    for box, pose in zip(msg.boxes, poses, strict=True):
        assert box.pose_status == pose.status and box.pose_quality == pytest.approx(pose.quality)
        if pose.status != PoseStatus.OK:
            assert box.top_length == 0 and box.pose.orientation.w == 1
            continue
        position = box.pose.position
        np.testing.assert_allclose([position.x, position.y, position.z], pose.position)
        rotation = matrix_from_quaternion([box.pose.orientation.x, box.pose.orientation.y, box.pose.orientation.z,
                                           box.pose.orientation.w])
        np.testing.assert_allclose(rotation, pose.rotation, atol=1e-9)
        assert (box.top_length, box.top_width) == pytest.approx((pose.length, pose.width))
    assert msg.boxes[0].pose_status == BoxMask.POSE_SPARSE_DEPTH
    assert {status.name: int(status) for status in PoseStatus} == {
        name[len("POSE_"):]: getattr(BoxMask, name) for name in dir(BoxMask) if name.startswith("POSE_")}
    with pytest.raises(ValueError, match="one pose each"):
        add_poses(untouched, poses[1:], order)


def scenes_at(distances, seeds):
    """{distance: the generator's scenes (kind, seed) of these seeds whose half-seen tops' median depth is within
    20 % of it}."""
    found = {distance: [] for distance in distances}
    for seed in seeds:
        for kind in ("loose", "pallet"):
            scene = synthetic.render_scene(seed, 640, 480, kind)
            tops = [scene.cartons[label - 1].top_center[2] for label in scene.visible_labels()
                    if top_share_seen(scene, label) >= 0.5]
            for distance in distances:
                if tops and abs(np.median(tops) / distance - 1) < 0.2:
                    found[distance].append((kind, seed))
    return found


def normal_floor(distance, scenes):
    """Of the well-seen tops at `distance` (within 20 %) in these scenes, how many normals come out more than 3
    degrees off when fitted to the true top pixels of registered stereo depth alone, and how many with the true
    side pixels held square to the top (pick_pose's joint refit): what one frame's noise allows at best."""
    from box_segmentation.pick_pose import _Face, _moments, _square_to_sides

    def points(pixels, depth, camera):
        rows, cols = np.nonzero(cv2.erode(pixels.astype(np.uint8), np.ones((5, 5), np.uint8)) & (depth > 0))
        z = depth[rows, cols]
        return np.stack([(cols - camera.cx) / camera.fx * z, (rows - camera.cy) / camera.fy * z, z])  # (3, N)

    tops, top_off, joint_off = 0, 0, 0
    for kind, seed in scenes:
        scene = synthetic.render_scene(seed, 640, 480, kind)
        camera = scene.camera
        depth = stereo_depth(scene.depth, scene.labels, scene.top_face, scene.image, camera, scene.cartons,
                             np.random.default_rng(seed), shift=(0, 0))[0] / 1000.0
        v, u = np.mgrid[:camera.height, :camera.width]
        true_points = np.dstack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones(u.shape)]) \
            * (scene.depth / 1000.0)[..., None]
        for label in scene.visible_labels():
            carton = scene.cartons[label - 1]
            if not top_face_well_seen(scene, label) or abs(carton.top_center[2] / distance - 1) >= 0.2:
                continue
            own = scene.labels == label
            top = _Face(*_moments(points(own & scene.top_face, depth, camera)))
            # Which side a pixel shows, from the true surface: the one it lies on (within 5 mm).
            box = (true_points - carton.top_center + carton.top_normal * carton.size[2] / 2) @ carton.rotation
            sides = []
            for axis in (0, 1):
                for sign in (1, -1):
                    side = points(own & ~scene.top_face & (np.abs(sign * box[..., axis] - carton.size[axis] / 2)
                                                          < 0.005), depth, camera)
                    if side.shape[1] >= 30:
                        face = _Face(*_moments(side))
                        sides.append(face._replace(normal=face.plane()[:3]))
            joint = _square_to_sides([top], [sides])[0][0] if sides else top.plane()
            tops += 1
            top_off += math.degrees(math.acos(min(1.0, abs(top.plane()[:3] @ carton.top_normal)))) > 3
            joint_off += math.degrees(math.acos(min(1.0, abs(joint[:3] @ carton.top_normal)))) > 3
    return tops, top_off, joint_off


if __name__ == "__main__":  # the figures in README's pick-pose section
    import argparse
    parser = argparse.ArgumentParser(description="The pick-pose accuracy figures in README.")
    parser.add_argument("--all-seeds", action="store_true",
                        help="every scene of seeds 0-159 at each distance, not only the tests', and the noise floor")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, AVERAGED_FRAMES],
                        help="stereo depth averaged over this many frames (1: one frame), a row each")
    parser.add_argument("--distances", type=float, nargs="+", default=sorted(STEREO_SCENES))
    args = parser.parse_args()
    all_seeds = args.all_seeds
    print("depth           well-seen  OK  pick point  normal   size   (worst, mm / degrees / mm)")
    for name, noise_seed in (("clean", None), ("sensor-like", 100)):
        errors_found = [entry[3] for entry in pose_errors(noise_seed)]
        print(f"{name:15} {len(errors_found):9} all  " + "  ".join(
            f"{max(e[key] for e in errors_found) * scale:6.1f}" for key, scale in
            (("position", 1000), ("normal_deg", 1), ("size", 1000))))
    print("stereo    frames  scenes  half-seen tops OK   well-seen within 1.5 cm / 3 deg   "
          "worst pick point / normal / size")
    all_scenes = scenes_at(args.distances, range(160)) if all_seeds else STEREO_SCENES
    for distance in args.distances:
        scenes = all_scenes[distance]
        for frames in args.frames:
            half_seen, ok, found = stereo_results(distance, scenes, frames)
            posed = [e for e in found if e is not None]
            print(f"{distance:.1f} m     {frames:<7} {len(scenes):<7} {ok}/{half_seen:<18} "
                  f"{len(within(found, BOUNDS_STEREO))}/{len(found):<27} " + " / ".join(
                      f"{max(e[key] for e in posed) * scale:.1f}" for key, scale in
                      (("position", 1000), ("normal_deg", 1), ("size", 1000))))
        if all_seeds:
            tops, top_off, joint_off = normal_floor(distance, scenes)
            print(f"          true pixels of {tops} well-seen tops of one frame, normals over 3 deg: {top_off} from "
                  f"the top alone, {joint_off} with the sides square to it")


def test_a_faces_scatter_keeps_its_squared_residuals():
    # A face weighs by its points over its squared residuals, read off its scatter matrix across the plane: 1e-5
    # of the matrix's entries here (50,000 points 2 m away, 0.2 mm noise), which float32 sums lose (7e-3 off).
    rng = np.random.default_rng(0)
    normal = np.array([0.1, -0.2, 1.0]) / np.linalg.norm([0.1, -0.2, 1.0])
    along = np.linalg.svd(normal[None])[2][1:]  # two directions in the plane
    points = (np.array([0.3, -0.2, 2.0])[:, None] + along.T @ rng.uniform(-0.2, 0.2, size=(2, 50_000))
              + normal[:, None] * rng.normal(0, 0.0002, 50_000)).astype(np.float32)
    offsets = points.astype(np.float64) - points.astype(np.float64).mean(axis=1, keepdims=True)
    count, mean, scatter = pick_pose._moments(points)
    assert count == 50_000 and mean == pytest.approx(points.astype(np.float64).mean(axis=1))
    assert normal @ scatter @ normal == pytest.approx(np.sum((normal @ offsets) ** 2), rel=1e-5)


def test_the_half_plane_behind_a_crease_holds_on_windows_of_any_width():
    # _behind_line finds each row's run by a sorted search, with column indices in the smallest integer type that
    # holds them: a window wider than 32,767 pixels (a 100 MP image allows 44,000) must not wrap them.
    rng = np.random.default_rng(1)
    for width in (5, 300, 40_000):
        rays = (np.linspace(-0.6, 0.6, width, dtype=np.float32)[None],
                np.linspace(-0.4, 0.4, 50, dtype=np.float32)[:, None])
        for line in rng.normal(size=(10, 3)):
            expected = line[1] * rays[1] + (line[0] * rays[0] + line[2]) <= 0
            np.testing.assert_array_equal(pick_pose._behind_line(line, rays), expected)
