"""segment_node end to end: the node in its own process, images in and BoxMasks out over real DDS.

Each node configuration starts once per module; the last test stops them and checks the exit.
"""

import ast
import signal
import time

import numpy as np
import pytest
import rclpy
import yaml
from node_harness import CONFIG, REPO, NodeProcess, Probe, carton_image, stamp_seconds
from sensor_msgs.msg import Image

from box_segmentation.model import read_checkpoint
from box_segmentation.node.node import PARAMETERS

READY = "ready:"
STATUS = "segment_node: segmentation"


@pytest.fixture(scope="module")
def checkpoint_config(tiny_checkpoint):
    return read_checkpoint(tiny_checkpoint)["config"]


@pytest.fixture(scope="module")
def raw_node(tiny_checkpoint):
    """The shipped config/segment.yaml with only the checkpoint given."""
    node = NodeProcess(f"checkpoint:={tiny_checkpoint}")
    yield node
    node.stop()


@pytest.fixture(scope="module")
def compressed_node(tiny_checkpoint):
    # Its own namespace, so its relative output topic is /compressed/box_masks.
    node = NodeProcess(f"checkpoint:={tiny_checkpoint}", "input_type:=compressed", ros_args=("-r", "__ns:=/compressed"))
    yield node
    node.stop()


@pytest.fixture(scope="module")
def probe():
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = Probe(context)
    yield probe
    probe.close()
    rclpy.shutdown(context=context)


@pytest.fixture(scope="module")
def started(raw_node, compressed_node):
    # Both nodes load their models side by side: one start-up wait for the module.
    raw_node.wait_for_output(READY)
    compressed_node.wait_for_output(READY)
    return raw_node, compressed_node


def check_result(result, image, classes, score_threshold):
    assert result.header == image.header
    assert (result.height, result.width) == (image.height, image.width)
    scores = [box.score for box in result.boxes]
    assert scores == sorted(scores, reverse=True)
    for index, box in enumerate(result.boxes):
        roi = box.roi
        assert box.id == index
        assert len(box.mask) == roi.width * roi.height > 0
        assert roi.x_offset + roi.width <= image.width and roi.y_offset + roi.height <= image.height
        assert box.area == sum(box.mask) > 0
        assert box.class_name == classes[box.class_id - 1]
        assert score_threshold - 1e-6 <= box.score <= 1.0


def test_results_carry_the_image_header_and_masks_in_their_rois(started, probe, checkpoint_config):
    boxes = 0
    for seed, encoding in enumerate(("rgb8", "bgr8", "mono8")):
        image, result = probe.request(lambda s=seed, e=encoding: probe.image(carton_image(s), f"cam_{s}", e))
        check_result(result, image, checkpoint_config["classes"], checkpoint_config["score_threshold"])
        boxes += len(result.boxes)
    assert boxes > 0, "no instances in any image: the checks above saw nothing"


def test_compressed_images_are_segmented(started, probe, checkpoint_config):
    image, result = probe.request(lambda: probe.compressed_image(carton_image(7), "jpeg_cam"),
                                  publisher=probe.compressed, topic="/compressed/box_masks")
    assert result.header == image.header
    assert (result.height, result.width) == (120, 160)
    reference = Image(height=120, width=160, header=image.header)
    check_result(result, reference, checkpoint_config["classes"], checkpoint_config["score_threshold"])


def test_debug_image_is_published_for_a_subscriber(started, probe):
    overlays = probe.listen("/box_masks/debug_image", Image)
    image, _ = probe.request(lambda: probe.image(carton_image(3), "debug_cam"))
    deadline = time.monotonic() + 10
    while not overlays and time.monotonic() < deadline:  # the node may only now see our subscription
        probe.request(lambda: probe.image(carton_image(3), "debug_cam"))
    assert overlays, "no debug image"
    overlay = overlays[-1][1]
    assert (overlay.height, overlay.width, overlay.encoding) == (120, 160, "rgb8")
    assert overlay.header.frame_id == "debug_cam"


def bad_image(kind: str) -> Image:
    good = {"height": 120, "width": 160, "encoding": "rgb8", "step": 480, "data": bytes(480 * 120)}
    changes = {
        "unknown encoding": {"encoding": "yuv999"},
        "short data": {"data": bytes(1000)},
        "zero size": {"height": 0, "width": 0, "step": 0, "data": b""},
        "absurd size": {"height": 1_000_000, "width": 1_000_000, "step": 3_000_000},
    }
    return Image(**{**good, **changes[kind]})


@pytest.mark.parametrize("kind", ["unknown encoding", "short data", "zero size", "absurd size"])
def test_bad_image_is_counted_and_the_next_good_one_answered(started, probe, kind):
    before = int(probe.status(STATUS, after=time.time())["bad frames"])
    msg = bad_image(kind)
    msg.header.stamp = probe.node.get_clock().now().to_msg()
    probe.images.publish(msg)
    probe.status(STATUS, until=lambda values: int(values["bad frames"]) == before + 1)
    probe.request(lambda: probe.image(carton_image(11), "after_bad"))
    raw_node, _ = started
    assert "skipping bad image" in raw_node.output


def test_overload_publishes_the_newest_frames_without_a_queue(started, probe):
    """30 Hz into a node far slower than 33 ms a frame: frames are dropped, never queued."""
    results = probe.listen()
    start = time.time()
    before = probe.status(STATUS, after=start)
    image = carton_image(5)
    sent = []
    for _ in range(90):  # 3 s
        msg = probe.image(image, "overload")
        probe.images.publish(msg)
        sent.append(stamp_seconds(msg.header))
        time.sleep(1 / 30)
    time.sleep(3.0)  # the last frame's inference

    got = [(received, stamp_seconds(msg.header)) for received, msg in list(results)
           if msg.header.frame_id == "overload" and received > start]
    stamps = [stamp for _, stamp in got]
    assert len(got) >= 3, f"only {len(got)} results"
    assert stamps == sorted(set(stamps)), "results out of order or repeated"
    assert stamps[-1] in sent[-3:], "the last result is not one of the newest frames"
    # Under overload the worker never idles, so output intervals are inference times.
    cycle = max(np.diff([received for received, _ in got]))
    ages = [received - stamp for received, stamp in got]
    print(f"overload: {len(got)} results, cycle {cycle:.3f} s, ages {min(ages):.3f}-{max(ages):.3f} s")
    assert max(ages) < 2 * cycle + 0.3, f"results {max(ages):.2f} s old with {cycle:.2f} s a frame: a queue?"

    after = probe.status(STATUS, after=time.time())
    published = int(after["frames published"]) - int(before["frames published"])
    received = int(after["frames received"]) - int(before["frames received"])
    dropped = int(after["frames dropped"]) - int(before["frames dropped"])
    assert published == len(got)
    assert dropped > 0 and received == published + dropped


def test_fatal_starts_say_why_in_one_line(tmp_path, tiny_checkpoint):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    cases = {
        "does not exist": NodeProcess(f"checkpoint:={tmp_path / 'missing.pt'}"),
        "cannot be loaded": NodeProcess(f"checkpoint:={corrupt}"),
        "CUDA is not available": NodeProcess(f"checkpoint:={tiny_checkpoint}", "device:=cuda"),
    }
    for message, node in cases.items():
        assert node.wait() != 0, node.output
        fatal = [line for line in node.output.splitlines() if "[FATAL]" in line]
        assert len(fatal) == 1 and message in fatal[0], node.output
        assert "Traceback" not in node.output


def test_config_file_holds_every_parameter_at_its_default():
    params = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]
    assert params == {name: default for name, (default, _, _) in PARAMETERS.items()}


def test_launch_file_compiles_and_its_arguments_are_node_parameters():
    source = (REPO / "launch" / "segment.launch.py").read_text()
    tree = ast.parse(source)
    compile(tree, "segment.launch.py", "exec")
    overrides = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                     and node.targets[0].id == "OVERRIDES")
    names = {key.value for key in overrides.keys}
    assert {"checkpoint", "image_topic", "device", "depth_topic"} <= names <= PARAMETERS.keys()
    for argument in ("params_file", "namespace"):
        assert f'"{argument}"' in source


def test_stops_cleanly_on_sigterm_and_ctrl_c(started, probe):
    raw_node, compressed_node = started
    probe.images.publish(probe.image(carton_image(0)))
    time.sleep(0.05)  # stopped in the middle of a frame: its result has nowhere to go, and that is fine
    assert raw_node.stop(signal.SIGTERM) == 0, raw_node.output
    assert compressed_node.stop(signal.SIGINT) == 0, compressed_node.output
    for node in started:
        assert "Traceback" not in node.output and "segmentation failed" not in node.output, node.output
