"""Rosbag tools: dataset -> bag, offline replay against evaluate.py, output bags, live replay, bad bags."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from node_harness import REPO, NodeProcess
from rclpy.serialization import deserialize_message
from synthetic import generate_dataset

from box_segmentation.evaluation.bag import from_dataset, main, replay_offline
from box_segmentation.evaluation.bag_io import (
    ANNOTATIONS_FILE,
    BOX_MASKS_TYPE,
    IMAGE_TYPE,
    BagError,
    make_typestore,
    open_writer,
    read_messages,
)
from box_segmentation.evaluation.scd_layout import split_paths
from box_segmentation.messages import cropped_masks
from box_segmentation.model import read_checkpoint
from box_segmentation.msg import BoxMasks
from box_segmentation.segmenter import Segmenter

TOPIC = "/camera/color/image_raw"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bag_data")
    generate_dataset(root, train=0, val=4, seed=11, width=192, height=144)
    return root


@pytest.fixture(scope="module")
def bag(data, tmp_path_factory):
    return from_dataset(data, "val", tmp_path_factory.mktemp("bags") / "val", TOPIC, fps=5.0)


def test_dataset_becomes_a_bag_of_its_images_with_stamps(data, bag):
    images_dir, annotations_path = split_paths(data, "val")
    annotations = json.loads((bag / ANNOTATIONS_FILE).read_text())
    assert annotations["annotations"] == json.loads(annotations_path.read_text())["annotations"]
    frames = list(read_messages(bag, TOPIC, make_typestore()))
    assert len(frames) == len(annotations["images"]) == 4
    stamps = [timestamp for timestamp, _ in frames]
    assert stamps == sorted(set(stamps)) and stamps[1] - stamps[0] == 200_000_000  # 5 fps
    for (timestamp, message), image in zip(frames, annotations["images"], strict=True):
        assert message.header.stamp.sec * 10**9 + message.header.stamp.nanosec == timestamp == image["stamp_ns"]
        expected = cv2.cvtColor(cv2.imread(str(images_dir / image["file_name"])), cv2.COLOR_BGR2RGB)
        assert (message.height, message.width, message.encoding) == (144, 192, "rgb8")
        assert np.array_equal(message.data.reshape(144, 192, 3), expected)


def test_compressed_bag_carries_the_files_bytes(data, tmp_path):
    bag = from_dataset(data, "val", tmp_path / "compressed", TOPIC, compressed=True, storage="sqlite3")
    images_dir, _ = split_paths(data, "val")
    frames = list(read_messages(bag, TOPIC, make_typestore()))
    assert frames[0][1].format == "jpeg"
    assert frames[0][1].data.tobytes() == (images_dir / "000000.jpg").read_bytes()


def test_offline_replay_gives_evaluate_py_metrics(data, bag, trained_checkpoint, tmp_path):
    evaluated = subprocess.run([sys.executable, str(REPO / "training" / "evaluate.py"), "--data", str(data),
                                "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path), "--workers", "0"],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    expected = json.loads((tmp_path / "metrics.json").read_text())
    # evaluate.py scores everything above the model's own low threshold: replay the same.
    threshold = read_checkpoint(trained_checkpoint)["config"]["box_score_thresh"]
    annotations = json.loads((bag / ANNOTATIONS_FILE).read_text())
    report = replay_offline(bag, trained_checkpoint, TOPIC, annotations, device="cpu", score_threshold=threshold)
    assert report["frames"] == 4 and report["boxes_per_frame"] > 0
    assert expected["segm_AP50"] > 0.2, "the suite's trained model should find cartons"
    # Equal to the three decimals both tables print. Not to the last bit: the deployment path drops
    # the rare low-score detection whose mask is empty after thresholding (nothing to pick), while
    # evaluate.py scores the model's raw output, where such a detection counts as a false positive.
    for key in ("segm_AP", "segm_AR", "segm_AP50", "bbox_AP", "bbox_AR"):
        assert report["accuracy"][key] == pytest.approx(expected[key], abs=5e-4), key


def test_output_bag_reads_back_to_the_segmenter_masks(bag, trained_checkpoint, tmp_path):
    out = tmp_path / "results"
    replay_offline(bag, trained_checkpoint, TOPIC, output_bag=out, device="cpu")
    typestore = make_typestore()
    frames = list(read_messages(out, TOPIC, typestore))
    results = list(read_messages(out, "/box_masks", typestore))
    assert len(frames) == len(results) == 4
    segmenter = Segmenter(trained_checkpoint, device="cpu")
    for (_, frame), (_, result) in zip(frames, results, strict=True):
        assert result.header.stamp == frame.header.stamp
        # The recorded CDR is our generated message's own: it decodes with rclpy too.
        message = deserialize_message(typestore.serialize_cdr(result, BOX_MASKS_TYPE).tobytes(), BoxMasks)
        instances = segmenter(frame.data.reshape(frame.height, frame.width, 3))
        assert len(instances) == len(message.boxes) > 0
        for instance, mask in zip(instances, cropped_masks(message), strict=True):
            assert np.array_equal(instance.mask, mask)


def test_live_replay_accounts_for_every_frame(bag, trained_checkpoint, tmp_path):
    node = NodeProcess(f"checkpoint:={trained_checkpoint}", "input_reliability:=reliable",
                       ros_args=("-r", f"image:={TOPIC}"))
    try:
        node.wait_for_output("active:")
        report_path = tmp_path / "live.json"
        code = main(["replay", str(bag), "--live", "--rate", "4", "--report", str(report_path), "--timeout", "30"])
        assert code == 0
    finally:
        assert node.stop() == 0
    report = json.loads(report_path.read_text())
    assert report["frames"] == 4
    assert report["received"] + report["dropped"] == report["frames"]
    assert report["received"] >= 1
    assert report["latency"]["p50_ms"] > 0
    assert 0.0 <= report["accuracy"]["segm_AP"] <= 1.0
    assert int(report["node_diagnostics"]["frames received"]) >= report["received"]


def run_cli(*args):
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    return subprocess.run([sys.executable, "-m", "box_segmentation.evaluation.bag", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_bad_bags_are_clear_errors(bag, trained_checkpoint, tmp_path):
    missing_topic = run_cli("replay", str(bag), "--checkpoint", str(trained_checkpoint), "--image-topic", "/nope")
    assert missing_topic.returncode == 1
    assert "no topic /nope" in missing_topic.stderr and TOPIC in missing_topic.stderr

    missing = run_cli("replay", str(tmp_path / "absent"), "--checkpoint", str(trained_checkpoint))
    assert missing.returncode == 1 and "does not exist" in missing.stderr

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for path in bag.iterdir():
        content = path.read_bytes()
        (truncated / path.name).write_bytes(content[: len(content) // 2] if path.suffix == ".mcap" else content)
    result = run_cli("replay", str(truncated), "--checkpoint", str(trained_checkpoint))
    assert result.returncode == 1 and "cannot be read" in result.stderr and str(truncated) in result.stderr


def test_empty_bag_is_a_clear_error(tmp_path):
    typestore = make_typestore()
    writer = open_writer(tmp_path / "empty")
    writer.add_connection(TOPIC, IMAGE_TYPE, typestore=typestore)
    writer.close()
    with pytest.raises(BagError, match="no messages on"):
        list(read_messages(tmp_path / "empty", TOPIC, typestore))
