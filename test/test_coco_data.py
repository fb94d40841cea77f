"""The loader on the defects SCD has: each handled as specified and counted in the data report."""

import json

import numpy as np
import pytest
import torch
from coco_data import CocoCartons, DataError, boxes_from_masks, collate, load_split
from PIL import Image
from pycocotools import mask as mask_utils

from box_segmentation.evaluation.coco_annotations import compressed_run_lengths
from box_segmentation.evaluation.scd_layout import split_paths


def square(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_coco(root, images, annotations, split="train"):
    """images: [(file_name, (json_w, json_h), (file_w, file_h) or None for no file)]; writes the OSCD layout."""
    images_dir, annotation_file = split_paths(root, split)
    images_dir.mkdir(parents=True, exist_ok=True)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (name, (json_w, json_h), file_size) in enumerate(images, start=1):
        entries.append({"id": i, "file_name": name, "width": json_w, "height": json_h})
        if file_size is not None:
            Image.fromarray(np.full((file_size[1], file_size[0], 3), 128, np.uint8)).save(images_dir / name)
    for i, annotation in enumerate(annotations, start=1):
        annotation.setdefault("category_id", 1)
        annotation.setdefault("iscrowd", 0)
        annotation["id"] = i
    coco = {"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "carton"}]}
    annotation_file.write_text(json.dumps(coco))
    return images_dir, annotation_file


@pytest.fixture
def defects(tmp_path):
    rle = np.zeros((48, 64), np.uint8, order="F")
    rle[5:15, 40:60] = 1
    compressed = mask_utils.encode(rle)
    compressed["counts"] = compressed["counts"].decode()
    images = [
        ("multi.jpg", (64, 48), (64, 48)),
        ("rle.jpg", (64, 48), (64, 48)),
        ("empty.jpg", (64, 48), (64, 48)),
        ("mismatch.jpg", (128, 96), (64, 48)),
        ("degenerate.jpg", (64, 48), (64, 48)),
        ("missing.jpg", (64, 48), None),
    ]
    annotations = [
        # One carton seen in two pieces: two polygons, one instance. Its json bbox is wrong on purpose.
        {"image_id": 1, "segmentation": [square(2, 2, 12, 12), square(30, 20, 40, 30)], "bbox": [0, 0, 1, 1]},
        {"image_id": 2, "segmentation": compressed},
        {"image_id": 2, "segmentation": {"size": [48, 64], "counts": [48 * 10, 48 * 5, 48 * 49]}},  # uncompressed RLE
        {"image_id": 4, "segmentation": [square(20, 20, 60, 60)]},  # json frame is twice the file's
        {"image_id": 5, "segmentation": [[1, 1, 30, 30, 15, 15]], "bbox": [1, 1, 0, 0]},  # zero area
        {"image_id": 5, "segmentation": [[1, 2, 3, 4, 5]]},  # malformed polygon
        {"image_id": 5, "segmentation": [square(5, 5, 20, 20)], "category_id": 7},  # unknown category
        {"image_id": 5, "segmentation": [square(5, 5, 20, 20)], "iscrowd": 1},
        {"image_id": 5, "segmentation": [square(5, 5, 20, 20)]},  # the one good annotation of image 5
        {"image_id": 6, "segmentation": [square(5, 5, 20, 20)]},  # image file missing
    ]
    write_coco(tmp_path, images, annotations)
    return tmp_path


def by_name(dataset):
    return {path.name: dataset[i] for i, (_, path, *_) in enumerate(dataset.samples)}


def test_defects_are_handled_and_counted(defects):
    dataset = load_split(defects, "train")
    report = dataset.report
    assert report["images_listed"] == 6 and report["images_used"] == 5
    assert report["images_missing_file"] == 1
    assert report["images_size_mismatch_rescaled"] == 1
    assert report["negatives_kept"] == 1
    assert report["instances_degenerate"] == 1 and report["instances_malformed"] == 2
    assert report["instances_crowd"] == 1
    assert report["instances_listed"] == 10 and report["instances_used"] == 5
    text = dataset.report_text()
    assert "5 of 6 images used" in text and "images missing file: 1" in text and "instances degenerate: 1" in text
    samples = by_name(dataset)

    _, multi = samples["multi.jpg"]
    assert multi["masks"].shape == (1, 48, 64) and multi["masks"].dtype == torch.uint8
    assert multi["masks"][0, 5, 5] and multi["masks"][0, 25, 35] and not multi["masks"][0, 15, 20]
    assert multi["boxes"].tolist() == boxes_from_masks(multi["masks"]).tolist()
    assert multi["boxes"][0, 0] <= 2 and multi["boxes"][0, 2] >= 40  # spans both pieces, not the json bbox

    _, rle = samples["rle.jpg"]
    assert rle["masks"].shape[0] == 2
    assert rle["boxes"][0].tolist() == [40, 5, 60, 15]
    assert rle["boxes"][1].tolist() == [10, 0, 15, 48]  # column-major counts: columns 10-14

    image, empty = samples["empty.jpg"]
    assert image.shape == (3, 48, 64) and empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 48, 64)

    _, mismatch = samples["mismatch.jpg"]
    assert mismatch["masks"].shape == (1, 48, 64)  # the file's size, annotations halved
    assert mismatch["boxes"][0].tolist() == pytest.approx([10, 10, 31, 31], abs=1)

    _, degenerate = samples["degenerate.jpg"]
    assert degenerate["labels"].tolist() == [1]


def test_flags_skip_mismatched_sizes_and_drop_negatives(defects):
    images_dir, annotation_file = split_paths(defects, "train")
    dataset = CocoCartons(images_dir, annotation_file, size_mismatch="skip", keep_negatives=False)
    assert dataset.report["images_size_mismatch_skipped"] == 1 and dataset.report["negatives_dropped"] == 1
    assert sorted(path.name for _, path, *_ in dataset.samples) == ["degenerate.jpg", "multi.jpg", "rle.jpg"]
    assert dataset.aspect_ratios == [64 / 48] * 3


def test_unreadable_image_is_skipped_not_fatal(defects):
    images_dir, _ = split_paths(defects, "train")
    (images_dir / "rle.jpg").write_bytes(b"not a jpeg")
    dataset = load_split(defects, "train")
    assert dataset.report["images_unreadable"] == 1 and len(dataset) == 4


def test_missing_folder_or_bad_json_name_the_path(tmp_path, defects):
    with pytest.raises(FileNotFoundError, match="train2017"):
        load_split(tmp_path / "nowhere", "train")
    _, annotation_file = split_paths(defects, "train")
    annotation_file.write_text("{ not json")
    with pytest.raises(ValueError, match=str(annotation_file)):
        load_split(defects, "train")


def rle_claiming(height, width, pixels):
    """A compressed RLE for a (height, width) image whose run lengths cover `pixels` pixels."""
    side = int(pixels ** 0.5)
    rle = mask_utils.encode(np.asfortranarray(np.ones((side, pixels // side), np.uint8)))
    return {"size": [height, width], "counts": rle["counts"].decode()}


@pytest.mark.parametrize("case, report_key", [
    ("nan coordinate", "instances_coordinates_out_of_range"),
    ("1e300 coordinate", "instances_coordinates_out_of_range"),
    ("null annotation", "instances_malformed"),
    ("string coordinate", "instances_malformed"),
    ("compressed RLE of too few pixels", "instances_malformed"),
    ("compressed RLE of too many pixels", "instances_malformed"),
    ("compressed RLE, not the format", "instances_malformed"),
    ("width 0", "images_bad_size"),
    ("width a thousand times the file's", "images_bad_size"),
])
def test_what_a_fuzz_run_found_is_counted_not_fatal(tmp_path, case, report_key):
    """Each of these crashed start-up or ate the host's memory rasterising (see test_train for a run)."""
    good = {"image_id": 1, "segmentation": [square(5, 5, 20, 20)]}
    bad = {
        "nan coordinate": {"image_id": 1, "segmentation": [[1, 1, float("nan"), 5, 9, 9]]},
        "1e300 coordinate": {"image_id": 1, "segmentation": [[1, 1, 1e300, 5, 9, 1e300]]},
        "null annotation": None,
        "string coordinate": {"image_id": 1, "segmentation": [[1, 1, "9", 5, 9, 9]]},
        # pycocotools decodes short run lengths into a mask with uninitialised bytes, and refuses
        # long ones only when the mask is decoded, mid-epoch
        "compressed RLE of too few pixels": {"image_id": 1, "segmentation": rle_claiming(48, 64, 100)},
        "compressed RLE of too many pixels": {"image_id": 1, "segmentation": rle_claiming(48, 64, 1000 * 1000)},
        "compressed RLE, not the format": {"image_id": 1, "segmentation": {"size": [48, 64], "counts": "0P~~"}},
    }.get(case)
    _, annotation_file = write_coco(tmp_path, [("a.jpg", (64, 48), (64, 48))], [good])
    coco = json.loads(annotation_file.read_text())
    if case.startswith("width"):
        coco["images"][0]["width"] = 0 if case == "width 0" else 64000
    else:
        coco["annotations"].append(bad and {**bad, "id": 2, "category_id": 1})
    annotation_file.write_text(json.dumps(coco))
    dataset = load_split(tmp_path, "train")
    assert dataset.report[report_key] == 1, dataset.report_text()
    assert report_key.replace("_", " ") in dataset.report_text()
    if report_key.startswith("instances"):
        assert len(dataset) == 1 and dataset.report["instances_used"] == 1
        assert dataset[0][1]["masks"].shape == (1, 48, 64)
    else:
        assert len(dataset) == 0


def test_a_file_that_fails_mid_epoch_is_left_out_and_counted(defects):
    images_dir, _ = split_paths(defects, "train")
    dataset = load_split(defects, "train")  # the header check passes: the file is cut afterwards
    cut = images_dir / "multi.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 3])
    index = [path.name for _, path, *_ in dataset.samples].index("multi.jpg")
    assert dataset[index] is None
    images, targets, unreadable = collate([dataset[index], dataset[(index + 1) % len(dataset)]])
    assert len(images) == len(targets) == 1 and unreadable == 1


@pytest.mark.parametrize("categories, message", [
    ([], "lists no categories"),
    ([{"id": 1}], "integer id and a name"),
    ([{"id": 1, "name": "carton"}, {"id": 1, "name": "box"}], "category ids repeat"),
])
def test_categories_nothing_can_be_learnt_from_are_a_clear_error(tmp_path, categories, message):
    _, annotation_file = write_coco(tmp_path, [("a.jpg", (64, 48), (64, 48))],
                                    [{"image_id": 1, "segmentation": [square(5, 5, 20, 20)]}])
    coco = json.loads(annotation_file.read_text())
    annotation_file.write_text(json.dumps({**coco, "categories": categories}))
    with pytest.raises(DataError, match=message):
        load_split(tmp_path, "train")


def test_compressed_run_lengths_read_what_pycocotools_writes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = rng.integers(1, 60, 2)
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        compressed = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        column_major = mask.ravel(order="F")
        changes = np.flatnonzero(np.diff(column_major)) + 1
        edges = [0, *changes.tolist(), column_major.size]
        runs = ([0] if column_major[0] else []) + np.diff(edges).tolist()  # runs start with zeros
        assert compressed_run_lengths(compressed) == runs
