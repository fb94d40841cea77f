"""Rosbag tools: dataset -> bag, offline replay against evaluate.py, output bags, live replay, bad bags."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from node_harness import REPO, NodeProcess
from pycocotools import mask as mask_utils
from rclpy.serialization import deserialize_message
from synthetic import generate_dataset

from box_segmentation.evaluation.bag import from_dataset, main, replay_offline
from box_segmentation.evaluation.bag_io import (
    ANNOTATIONS_FILE,
    BOX_MASKS_TYPE,
    IMAGE_TYPE,
    BagError,
    close_writer,
    make_typestore,
    mcap_chunks,
    open_writer,
    read_messages,
    verify_chunk_crcs,
)
from box_segmentation.evaluation.coco_annotations import to_rle
from box_segmentation.evaluation.scd_layout import split_paths
from box_segmentation.messages import cropped_masks
from box_segmentation.model import read_checkpoint
from box_segmentation.msg import BoxMasks
from box_segmentation.segmenter import Segmenter

TOPIC = "/camera/color/image_raw"


def enlarge_json_frame(data, split: str, image_index: int, factor: int = 2) -> None:
    """SCD's defect (2293.jpg): the json claims a larger frame than the file's, its masks drawn in that frame."""
    _, annotations_path = split_paths(data, split)
    coco = json.loads(annotations_path.read_text())
    image = coco["images"][image_index]
    width, height = image["width"], image["height"]
    image["width"], image["height"] = width * factor, height * factor
    for annotation in coco["annotations"]:
        if annotation["image_id"] == image["id"]:
            mask = mask_utils.decode(to_rle(annotation["segmentation"], height, width))
            rle = mask_utils.encode(np.asfortranarray(cv2.resize(mask, (width * factor, height * factor),
                                                                 interpolation=cv2.INTER_NEAREST)))
            rle["counts"] = rle["counts"].decode()
            annotation.update(segmentation=rle, bbox=mask_utils.toBbox(rle).tolist(), area=float(mask_utils.area(rle)))
    annotations_path.write_text(json.dumps(coco))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bag_data")
    generate_dataset(root, train=0, val=4, seed=11, width=192, height=144)
    enlarge_json_frame(root, "val", image_index=1)
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
    """Also for an image whose json size is twice its file's: both rescale its annotations the same way."""
    evaluated = subprocess.run([sys.executable, str(REPO / "training" / "evaluate.py"), "--data", str(data),
                                "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path), "--workers", "0"],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "images size mismatch rescaled: 1" in evaluated.stdout
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
    for key in ("segm_AP", "segm_AR", "segm_AP50", "bbox_AP", "bbox_AR", "segm_AP_300det"):
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


def test_live_replay_drops_are_the_nodes_own(bag, trained_checkpoint, tmp_path):
    """Frames published 50 times faster than recorded: the busy node overwrites its one-frame mailbox.
    The frames the replay got answers for are the ones the node says it published, and the ones it
    calls dropped are those the node dropped, found bad or failed, or never received."""
    node = NodeProcess(f"checkpoint:={trained_checkpoint}", "input_reliability:=reliable",
                       ros_args=("-r", f"image:={TOPIC}"))
    try:
        node.wait_for_output("active:")
        report_path = tmp_path / "live.json"
        code = main(["replay", str(bag), "--live", "--rate", "50", "--report", str(report_path), "--timeout", "30"])
        assert code == 0
    finally:
        assert node.stop() == 0
    report = json.loads(report_path.read_text())
    counted = {key: int(value) for key, value in report["node_diagnostics"].items() if key.endswith(" frames")
               or key.startswith("frames ") and "per second" not in key}
    assert report["frames"] == 4 and report["received"] >= 1
    assert report["received"] == counted["frames published"]
    never_received = report["frames"] - counted["frames received"]
    assert report["dropped"] == (counted["frames dropped"] + counted["bad frames"] + counted["failed frames"]
                                 + never_received)


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
    assert result.returncode == 1 and "is damaged" in result.stderr and str(truncated) in result.stderr


def test_flipped_bytes_fail_naming_the_damaged_chunk(bag, trained_checkpoint, tmp_path):
    """2000 bytes flipped mid-file used to replay with rc 0 and a changed AP: the chunk CRC catches them."""
    (mcap,) = bag.glob("*.mcap")
    chunks = list(mcap_chunks(mcap))
    assert chunks and all(chunk.crc != 0 for chunk in chunks)  # our bags carry their CRCs
    damaged = tmp_path / "damaged"
    shutil.copytree(bag, damaged)
    content = bytearray((damaged / mcap.name).read_bytes())
    middle = len(content) // 2
    content[middle:middle + 2000] = bytes(byte ^ 0xFF for byte in content[middle:middle + 2000])
    (damaged / mcap.name).write_bytes(content)
    result = run_cli("replay", str(damaged), "--checkpoint", str(trained_checkpoint))
    assert result.returncode == 1, result.stdout
    assert f"{damaged / mcap.name} is damaged: chunk 0 at byte {chunks[0].offset}" in result.stderr
    assert "Traceback" not in result.stderr


def test_undecodable_frame_is_skipped_counted_and_reported(data, trained_checkpoint, tmp_path):
    images_dir, _ = split_paths(data, "val")
    typestore = make_typestore()
    types = typestore.types
    writer = open_writer(tmp_path / "one_bad")
    connection = writer.add_connection(TOPIC, IMAGE_TYPE, typestore=typestore)
    for index, name in enumerate(["000000.jpg", None, "000002.jpg"]):
        rgb = cv2.cvtColor(cv2.imread(str(images_dir / (name or "000001.jpg"))), cv2.COLOR_BGR2RGB)
        stamp = (index + 1) * 10**8
        header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=0, nanosec=stamp),
                                                frame_id="camera")
        data_bytes = rgb.reshape(-1) if name else rgb.reshape(-1)[:1000]  # the middle frame is cut short
        message = types[IMAGE_TYPE](header=header, height=144, width=192, encoding="rgb8", is_bigendian=0,
                                    step=192 * 3, data=data_bytes)
        writer.write(connection, stamp, typestore.serialize_cdr(message, IMAGE_TYPE))
    close_writer(writer)
    report = replay_offline(tmp_path / "one_bad", trained_checkpoint, TOPIC, device="cpu")
    assert report["frames"] == 2 and report["undecodable_frames"] == 1
    assert report["undecodable_examples"][0].startswith(f"frame at {2 * 10**8} ns:")


def test_empty_bag_is_a_clear_error(tmp_path):
    typestore = make_typestore()
    writer = open_writer(tmp_path / "empty")
    writer.add_connection(TOPIC, IMAGE_TYPE, typestore=typestore)
    close_writer(writer)
    with pytest.raises(BagError, match="no messages on"):
        list(read_messages(tmp_path / "empty", TOPIC, typestore))


def test_a_bag_without_crcs_warns_that_damage_cannot_be_seen(tmp_path):
    typestore = make_typestore()
    writer = open_writer(tmp_path / "no_crc")
    writer.add_connection(TOPIC, IMAGE_TYPE, typestore=typestore)
    writer.close()  # rosbags' own close: CRCs left at 0, as in bags written by other rosbags tools
    with pytest.warns(UserWarning, match="carry no CRC: damage to them cannot be detected"):
        verify_chunk_crcs(tmp_path / "no_crc")
