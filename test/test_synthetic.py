"""The synthetic carton generator: OSCD layout, COCO annotations that match the rendered masks, depth that
matches the 3D cartons, determinism."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import synthetic
from pycocotools.coco import COCO

WIDTH, HEIGHT = 160, 120
SEED = 7
COUNTS = {"train": 5, "val": 2}  # train image 3 is one of the empty ones (index % EMPTY_EVERY == 3)


def generate(directory, seed=SEED):
    return synthetic.generate_dataset(directory, COUNTS["train"], COUNTS["val"], seed, WIDTH, HEIGHT)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synthetic"))


def load(root, split):
    return COCO(str(root / "annotations" / f"instances_{split}2017.json"))


def annotations_of(coco, image_id):
    return sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: a["id"])


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_the_oscd_layout(root):
    assert root.parts[-2:] == ("coco_carton", "oneclass_carton")
    for split, count in COUNTS.items():
        assert len(list((root / "images" / f"{split}2017").glob("*.jpg"))) == count
        assert len(list((root / "images" / f"{split}2017_depth").glob("*.png"))) == count
        assert (root / "annotations" / f"instances_{split}2017.json").is_file()


@pytest.mark.parametrize("split", COUNTS)
def test_image_entries_match_files(root, split):
    coco = load(root, split)
    assert coco.dataset["categories"] == [{"id": 1, "name": "carton", "supercategory": "carton"}]
    assert len({image["id"] for image in coco.dataset["images"]}) == COUNTS[split]
    assert len({a["id"] for a in coco.dataset["annotations"]}) == len(coco.dataset["annotations"])
    for image in coco.dataset["images"]:
        pixels = cv2.imread(str(root / "images" / f"{split}2017" / image["file_name"]))
        depth = cv2.imread(str(root / "images" / image["depth_file"]), cv2.IMREAD_UNCHANGED)
        assert pixels.shape == (image["height"], image["width"], 3) == (HEIGHT, WIDTH, 3)
        assert depth.shape == (HEIGHT, WIDTH) and depth.dtype == np.uint16
        assert set(image["camera"]) == {"fx", "fy", "cx", "cy"}


@pytest.mark.parametrize("split", COUNTS)
def test_annotations_are_the_rendered_masks(root, split):
    coco = load(root, split)
    for image in coco.dataset["images"]:
        scene = synthetic.dataset_scene(SEED, split, image["id"] - 1, WIDTH, HEIGHT)
        # The re-rendered scene is the one on disk.
        jpeg = (root / "images" / f"{split}2017" / image["file_name"]).read_bytes()
        assert jpeg == synthetic.encode_jpeg(scene.image)
        depth = cv2.imread(str(root / "images" / image["depth_file"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(depth, scene.depth)

        counts = np.bincount(scene.labels.ravel(), minlength=len(scene.cartons) + 1)[1:]
        visible = np.flatnonzero(counts >= synthetic.MIN_VISIBLE_PIXELS) + 1
        annotations = annotations_of(coco, image["id"])
        assert len(annotations) == len(visible), "every carton with enough visible pixels is annotated"

        covered = np.zeros((HEIGHT, WIDTH), int)
        for annotation, label in zip(annotations, visible, strict=True):
            drawn = coco.annToMask(annotation).astype(bool)
            rendered = scene.labels == label
            assert np.array_equal(drawn, rendered), "the RLE is the rendered mask, pixel for pixel"
            assert annotation["area"] == rendered.sum()
            rows, cols = np.flatnonzero(rendered.any(1)), np.flatnonzero(rendered.any(0))
            assert annotation["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            assert annotation["iscrowd"] == 0 and annotation["category_id"] == 1
            assert annotation["segmentation"]["size"] == [HEIGHT, WIDTH]
            covered += drawn
        assert covered.max() <= 1, "instance masks do not overlap"


def test_empty_images_have_no_annotations(root):
    coco = load(root, "train")
    empty = coco.dataset["images"][3]
    assert empty["scene"] == "empty"
    assert annotations_of(coco, empty["id"]) == []
    assert all(annotations_of(coco, image["id"]) for image in coco.dataset["images"][:3])


def test_same_seed_same_bytes_other_seed_differs(root, tmp_path):
    again = files(generate(tmp_path / "again"))
    assert again == files(root)
    other = files(generate(tmp_path / "other", seed=SEED + 1))
    assert other.keys() == again.keys()
    assert all(other[name] != again[name] for name in again if name.suffix in (".jpg", ".json"))


def check_top_faces(depth, camera, top_faces, cartons):
    """Each carton's top-face pixels, back-projected, lie on one plane: the true top face."""
    checked = 0
    v, u = np.indices(depth.shape)
    points = np.dstack([(u - camera["cx"]) / camera["fx"], (v - camera["cy"]) / camera["fy"], np.ones(depth.shape)])
    points *= depth[..., None] / 1000.0
    for top, carton in zip(top_faces, cartons, strict=True):
        if top.sum() < 20:
            continue
        on_top = points[top]
        centre, normal = np.array(carton["top_center"]), np.array(carton["top_normal"])
        # A plane fitted to the pixels is flat to depth quantisation (1 mm) and faces the true way.
        mean = on_top.mean(0)
        fitted = np.linalg.svd(on_top - mean, full_matrices=False)[2][2]
        assert np.sqrt(np.mean(((on_top - mean) @ fitted) ** 2)) < 0.002
        assert abs(fitted @ normal) > np.cos(np.radians(10))
        # Every pixel is on the true top plane (through the true centre) to within quantisation, and
        # inside the top rectangle.
        assert np.abs((on_top - centre) @ normal).max() < 0.0015
        axes, size = np.array(carton["rotation"]), np.array(carton["size"])
        assert (np.abs((on_top - centre) @ axes[:, :2]) <= size[:2] / 2 + 0.005).all()
        checked += 1
    return checked


@pytest.mark.parametrize("split", COUNTS)
def test_depth_agrees_with_the_3d_cartons(root, split):
    coco = load(root, split)
    checked = 0
    for image in coco.dataset["images"]:
        scene = synthetic.dataset_scene(SEED, split, image["id"] - 1, WIDTH, HEIGHT)
        depth = cv2.imread(str(root / "images" / image["depth_file"]), cv2.IMREAD_UNCHANGED)
        annotations = annotations_of(coco, image["id"])
        tops = [scene.top_face & (coco.annToMask(a) > 0) for a in annotations]
        checked += check_top_faces(depth, image["camera"], tops, [a["carton_3d"] for a in annotations])
    assert checked > 0


@pytest.mark.parametrize("kind", ["pallet", "loose", "trunk", "shelf"])
def test_every_layout_shows_cartons_on_planes(kind):
    scene = synthetic.render_scene(1, 320, 240, kind)
    assert scene.image.shape == (240, 320, 3) and scene.image.dtype == np.uint8
    assert scene.depth.dtype == np.uint16 and scene.labels.shape == (240, 320)
    labels = scene.visible_labels()
    assert len(labels) >= 2
    tops = [scene.top_face & (scene.labels == k) for k in labels]
    cartons = [scene.cartons[k - 1].to_json() for k in labels]
    assert check_top_faces(scene.depth, scene.camera.intrinsics(), tops, cartons) > 0


def test_empty_scene_has_no_cartons():
    scene = synthetic.render_scene(2, WIDTH, HEIGHT, "empty")
    assert scene.cartons == [] and not scene.labels.any() and scene.instance_masks().shape == (0, HEIGHT, WIDTH)


def test_command_line(tmp_path):
    script = Path(synthetic.__file__).parents[1] / "generate_synthetic.py"
    usage = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True).stdout
    assert "640" in usage and "480" in usage
    args = ["--out", tmp_path, "--train", "1", "--val", "1", "--seed", "3", "--width", "64", "--height", "48"]
    subprocess.run([sys.executable, script, *map(str, args)], check=True, capture_output=True)
    root = tmp_path / "coco_carton" / "oneclass_carton"
    assert cv2.imread(str(root / "images" / "val2017" / "000000.jpg")).shape == (48, 64, 3)
    assert load(root, "train").dataset["images"][0]["width"] == 64
