"""segment_node with depth: colour, aligned depth and CameraInfo in over real DDS, masks with pick poses out.

The model has random weights, so its masks are no cartons and the poses' accuracy is pick_pose's tests' business.
Here: that each frame is paired with the right depth image, that the poses are computed from it (they land in
their masks, at the scene's depths, and scale with the depth), and that frames without usable depth still go out.
"""

import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import rclpy
import synthetic
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseArray
from node_harness import (
    CAMERA_INFO_TOPIC,
    DEPTH_TOPIC,
    IMAGE_TOPIC,
    NodeProcess,
    Probe,
    camera_info,
    depth_image,
)
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from box_segmentation.msg import BoxMask
from box_segmentation.node.frame_sync import DEPTH_ARRIVING_WITHIN, DepthCache
from box_segmentation.srv import Segment

READY = "active:"
STATUS = "segment_node: segmentation"
WIDTH, HEIGHT = 320, 240
SEEDS = (3, 4)  # pallet scenes where the random model's masks give several OK poses


@pytest.fixture(scope="module")
def scenes():
    return {seed: synthetic.render_scene(seed, WIDTH, HEIGHT, "pallet") for seed in SEEDS}


@pytest.fixture(scope="module")
def node(tiny_checkpoint):
    node = NodeProcess(f"checkpoint:={tiny_checkpoint}", "use_depth:=true",
                       ros_args=("-r", f"image:={IMAGE_TOPIC}", "-r", f"depth:={DEPTH_TOPIC}", "-r",
                                 f"camera_info:={CAMERA_INFO_TOPIC}"))
    yield node
    node.stop()


@pytest.fixture(scope="module")
def camera(node):
    """A probe that publishes a scene as a camera would: colour image, aligned depth and CameraInfo."""
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = Probe(context)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    probe.depth = probe.node.create_publisher(Image, DEPTH_TOPIC, qos)
    probe.info = probe.node.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, qos)
    node.wait_for_output(READY)
    deadline = time.monotonic() + 20
    while min(probe.depth.get_subscription_count(), probe.info.get_subscription_count()) == 0:
        assert time.monotonic() < deadline, "segment_node's depth subscriptions never matched"
        time.sleep(0.1)
    yield probe
    probe.close()
    rclpy.shutdown(context=context)


def send(camera, scene, frame_id, depth=None, depth_offset=0.0, depth_delay=0.0, intrinsics=None):
    """A make_msg for Probe.request: publishes CameraInfo (of scene.camera unless intrinsics are given) and depth
    (scene.depth unless given, stamped depth_offset s off the colour image, published depth_delay s after it) and
    returns the colour image."""
    image = camera.image(scene.image, frame_id)
    sec, nanosec = divmod(image.header.stamp.sec * 10**9 + image.header.stamp.nanosec + round(depth_offset * 1e9),
                          10**9)
    header = Header(frame_id=frame_id, stamp=Time(sec=sec, nanosec=nanosec))
    depth_msg = depth_image(scene.depth if depth is None else depth, header)
    camera.info.publish(camera_info(intrinsics or scene.camera, image.header))
    if depth_delay:  # after the colour image, which request() publishes on our return
        threading.Timer(depth_delay, camera.depth.publish, [depth_msg]).start()
    else:
        camera.depth.publish(depth_msg)
        # Best effort drops what overflows Fast DDS's shared-memory segment: a 300 kB depth image and a
        # colour image back to back can. Cameras' frames are spaced too.
        time.sleep(0.05)
    return image


def project(position, scene):
    c = scene.camera
    return c.fx * position.x / position.z + c.cx, c.fy * position.y / position.z + c.cy


def ok_boxes(result):
    return [box for box in result.boxes if box.pose_status == BoxMask.POSE_OK]


def test_poses_are_computed_from_the_depth_paired_by_stamp(camera, scenes):
    oks = 0
    for seed, scene in scenes.items():
        # The second scene's depth comes after its colour image: the worker looks again after inference.
        delay = 0.01 if seed == SEEDS[1] else 0.0
        image, result = camera.request(lambda s=scene, n=seed, d=delay: send(camera, s, f"scene_{n}", depth_delay=d))
        assert result.header == image.header
        assert result.boxes, "no instances: nothing to check"
        assert all(box.pose_status != BoxMask.POSE_NONE for box in result.boxes)
        assert sorted(box.pick_rank for box in result.boxes) == list(range(len(result.boxes)))
        for box in ok_boxes(result):
            u, v = project(box.pose.position, scene)
            x, y, w, h = box.roi.x_offset, box.roi.y_offset, box.roi.width, box.roi.height
            assert x - 1 <= u <= x + w and y - 1 <= v <= y + h  # pixel centres x..x+w-1, and half a pixel of slack
            in_roi = scene.depth[y:y + h, x:x + w]
            seen = in_roi[in_roi > 0] / 1000
            assert seen.min() - 0.01 <= box.pose.position.z <= seen.max() + 0.01
            assert box.top_length >= box.top_width > 0
        oks += len(ok_boxes(result))
    assert oks >= 3, "too few OK poses to say anything"
    values = camera.status(STATUS, until=lambda values: int(values["poses OK"]) >= oks)
    assert int(values["frames without depth match"]) == 0 and values["poses mean (ms)"] != "nan"


def test_32fc1_depth_in_metres_gives_the_same_poses(camera, scenes):
    """The same image with its depth in 32FC1 metres: the same masks and poses as from 16UC1 millimetres.
    (Not doubled: the fit's tolerance follows the camera's depth step, which grows with the distance squared.)"""
    scene = scenes[3]
    _, millimetres = camera.request(lambda: send(camera, scene, "millimetres"))
    metres = (scene.depth * np.float32(1 / 1000)).astype(np.float32)
    _, from_metres = camera.request(lambda: send(camera, scene, "metres", depth=metres))
    assert [box.mask for box in millimetres.boxes] == [box.mask for box in from_metres.boxes]
    assert ok_boxes(millimetres)
    assert [box.id for box in ok_boxes(millimetres)] == [box.id for box in ok_boxes(from_metres)]
    for a, b in zip(ok_boxes(millimetres), ok_boxes(from_metres), strict=True):
        for axis in "xyz":
            assert getattr(b.pose.position, axis) == pytest.approx(getattr(a.pose.position, axis), abs=1e-5)
        assert b.top_length == pytest.approx(a.top_length, abs=1e-5)


def test_a_frame_without_depth_in_tolerance_is_published_without_poses(camera, scenes):
    before = int(camera.status(STATUS, after=time.time())["frames without depth match"])
    image, result = camera.request(lambda: send(camera, scenes[3], "unsynced", depth_offset=-0.1))
    assert result.boxes and all(box.pose_status == BoxMask.POSE_NONE for box in result.boxes)
    values = camera.status(STATUS, until=lambda values: int(values["frames without depth match"]) > before)
    assert int(values["poses NONE"]) >= len(result.boxes)


def test_depth_of_the_wrong_size_is_survived_and_counted(camera, scenes, node):
    before = int(camera.status(STATUS, after=time.time())["frames with bad depth"])
    small = scenes[3].depth[::2, ::2].copy()
    _, result = camera.request(lambda: send(camera, scenes[3], "small_depth", depth=small))
    assert result.boxes and all(box.pose_status == BoxMask.POSE_NONE for box in result.boxes)
    camera.status(STATUS, until=lambda values: int(values["frames with bad depth"]) > before)
    assert "depth image is 160x120 but the colour image is 320x240" in node.output
    camera.request(lambda: send(camera, scenes[3], "after_small"))  # and the next good frame is answered


def test_camera_info_of_another_size_is_survived_and_counted(camera, scenes, node):
    before = int(camera.status(STATUS, after=time.time())["frames without camera info"])
    other = SimpleNamespace(fx=500.0, fy=500.0, cx=319.5, cy=239.5, width=640, height=480)
    _, result = camera.request(lambda: send(camera, scenes[3], "other_info", intrinsics=other))
    assert result.boxes and all(box.pose_status == BoxMask.POSE_NONE for box in result.boxes)
    camera.status(STATUS, until=lambda values: int(values["frames without camera info"]) > before)
    assert "CameraInfo is 640x480" in node.output
    camera.request(lambda: send(camera, scenes[3], "after_other_info"))


def test_pose_array_and_markers_are_published_for_subscribers(camera, scenes):
    pose_arrays = camera.listen("/box_masks/poses", PoseArray)
    marker_arrays = camera.listen("/box_masks/markers", MarkerArray)
    deadline = time.monotonic() + 20
    while True:  # the node may only now see our subscriptions
        image, result = camera.request(lambda: send(camera, scenes[3], "views"))
        time.sleep(0.2)
        poses = [msg for _, msg in list(pose_arrays) if msg.header == image.header]
        markers = [msg for _, msg in list(marker_arrays) if msg.markers[0].header == image.header]
        if (poses and markers) or time.monotonic() > deadline:
            break
    assert poses and markers, "no PoseArray or MarkerArray"
    picks = sorted(ok_boxes(result), key=lambda box: box.pick_rank)
    assert picks and poses[0].poses == [box.pose for box in picks]
    first, *rest = markers[0].markers
    assert first.action == Marker.DELETEALL
    cubes = [m for m in rest if m.type == Marker.CUBE]
    texts = [m for m in rest if m.type == Marker.TEXT_VIEW_FACING]
    assert [m.pose for m in cubes] == [box.pose for box in picks]
    for marker, box in zip(cubes, picks, strict=True):  # the message's sizes are float32
        assert (marker.scale.x, marker.scale.y) == pytest.approx((box.top_length, box.top_width), rel=1e-6)
    assert [m.text for m in texts] == [str(box.pick_rank) for box in picks]


def test_segment_service_answers_with_poses(camera, scenes):
    """An image given with the request pairs with the depth image of its stamp, as a camera frame does."""
    image = send(camera, scenes[3], "asked")
    response = camera.call(Segment, "/segment_node/segment", Segment.Request(image=image, timeout=10.0))
    assert response.success, response.message
    assert response.result.header == image.header and ok_boxes(response.result)
    assert all(box.pose_status != BoxMask.POSE_NONE for box in response.result.boxes)


def test_depth_cache_pairs_the_closest_stamp_within_tolerance():
    def depth(stamp_ns):
        sec, nanosec = divmod(stamp_ns, 10**9)
        return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)))

    cache = DepthCache(size=3)
    images = [depth(t) for t in (1_000_000_000, 1_033_000_000, 1_066_000_000, 1_100_000_000)]
    for msg in images:
        cache.put(msg)
    assert cache.closest(1_070_000_000, 20_000_000) is images[2]
    assert cache.closest(1_000_000_000, 20_000_000) is None  # pushed out by newer ones
    assert cache.closest(1_133_000_000, 20_000_000) is None
    late = depth(1_133_000_000)
    threading.Timer(0.05, cache.put, [late]).start()
    assert cache.closest(1_133_000_000, 20_000_000, wait=2.0) is late
    start = time.monotonic()
    assert cache.closest(2_000_000_000, 20_000_000, wait=0.05) is None
    assert time.monotonic() - start < 1.0


def test_a_silent_depth_topic_holds_no_frame_back():
    """Waiting for a late depth image only makes sense while depth images arrive and none is past the frame yet."""
    def depth(stamp_ns):
        sec, nanosec = divmod(stamp_ns, 10**9)
        return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)))

    def waited(stamp_ns):
        start = time.monotonic()
        assert cache.closest(stamp_ns, 20_000_000, wait=1.0) is None
        return time.monotonic() - start

    cache = DepthCache(size=3)
    assert waited(1_000_000_000) < 0.3  # no depth image ever
    cache.put(depth(1_000_000_000))
    assert waited(2_000_000_000) > 0.9  # arriving, none past the frame yet: one may still come
    assert waited(500_000_000) < 0.3  # depth already past the frame
    time.sleep(DEPTH_ARRIVING_WITHIN)
    assert waited(2_000_000_000) < 0.3  # stopped arriving


def test_camera_info_that_cannot_be_a_camera_is_counted_not_used(camera, scenes, node):
    """fx = fy = 1e-30 once gave OK poses at x = -1.6e32 m."""
    before = int(camera.status(STATUS, after=time.time())["frames without camera info"])
    tiny = SimpleNamespace(fx=1e-30, fy=1e-30, cx=159.5, cy=119.5, width=WIDTH, height=HEIGHT)
    deadline = time.monotonic() + 30  # best effort may drop a depth image; the warning shares a 5 s throttle
    while True:
        _, result = camera.request(lambda: send(camera, scenes[3], "tiny_focal", intrinsics=tiny))
        assert result.boxes and all(box.pose_status == BoxMask.POSE_NONE for box in result.boxes)
        values = camera.status(STATUS, after=time.time())
        if (int(values["frames without camera info"]) > before
                and "K's fx 1e-30 is no camera's for 320 pixels" in node.output):
            break
        assert time.monotonic() < deadline, "never counted and logged as no camera info"
    assert "depth registration offset (px)" in values  # "unknown" or "dx, dy": the registration check's
    _, result = camera.request(lambda: send(camera, scenes[3], "after_tiny_focal"))
    assert any(box.pose_status == BoxMask.POSE_OK for box in result.boxes)


def test_averaged_depth_gives_the_poses_of_the_mean_depth(camera, scenes, tiny_checkpoint):
    """depth_average_frames 2: frames whose depth is 8 mm too far, then one 8 mm too near (a change within the
    restart tolerance, 4 depth steps: 20 mm at 1.4 m): the last frame's poses lie at the two depth images' mean,
    8 mm nearer than the far frames', where its own depth image alone would put them 16 mm nearer. (A second node,
    in its own namespace, with reliable input: a depth image that never arrived would average nothing.)"""
    averaging = NodeProcess(f"checkpoint:={tiny_checkpoint}", "use_depth:=true", "depth_average_frames:=2",
                            "input_reliability:=reliable", ros_args=("-r", "__ns:=/averaging"))
    try:
        images, depth, info = (camera.publisher(f"/averaging/{name}", kind, ReliabilityPolicy.RELIABLE)
                               for name, kind in (("image", Image), ("depth", Image), ("camera_info", CameraInfo)))
        averaging.wait_for_output(READY)
        deadline = time.monotonic() + 20
        while min(publisher.get_subscription_count() for publisher in (images, depth, info)) == 0:
            assert time.monotonic() < deadline, "the averaging node's subscriptions never matched"
            time.sleep(0.1)
        scene = scenes[3]

        def frame(frame_id, millimetres):
            """The colour image, its depth image (millimetres further than the scene's) sent once: a retry sends the
            same colour image again, not more depth."""
            image = camera.image(scene.image, frame_id)
            info.publish(camera_info(scene.camera, image.header))
            further = np.where(scene.depth > 0, scene.depth.astype(np.int32) + millimetres, 0).astype(np.uint16)
            depth.publish(depth_image(further, image.header))
            time.sleep(0.05)  # a depth image and its colour one spaced, as in send()
            return image

        def poses(frame_id, millimetres):
            image = frame(frame_id, millimetres)
            result = camera.request(lambda: image, publisher=images, topic="/averaging/box_masks")[1]
            return {box.id: box.pose.position.z for box in ok_boxes(result)}

        # Far frames until the node has paired one with its depth and camera info (the first messages after
        # discovery can miss): far frames alike average to one of them, however many arrived.
        far, deadline = {}, time.monotonic() + 60
        while len(far) < 3:
            assert time.monotonic() < deadline, "the averaging node never gave poses for the far frames"
            far = poses("far", 8)
        near = poses("near", -8)
        both = sorted(far.keys() & near.keys())
        assert len(both) >= 3, "too few OK poses in both frames to say anything"
        for box in both:
            assert near[box] - far[box] == pytest.approx(-0.008, abs=0.002), box
    finally:
        assert averaging.stop(signal.SIGINT) == 0, averaging.output
    assert "Traceback" not in averaging.output, averaging.output


def test_stops_cleanly(node, camera, scenes):
    send(camera, scenes[4], "last")
    assert node.stop(signal.SIGINT) == 0, node.output
    assert "Traceback" not in node.output and "segmentation failed" not in node.output, node.output
