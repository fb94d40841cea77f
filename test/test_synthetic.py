"""The synthetic carton generator: OSCD layout, COCO annotations that match the rendered masks, depth that
matches the 3D cartons, determinism (for every style), and what each style switch does."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import synthetic
from pycocotools.coco import COCO
from synthetic import layout, render
from synthetic.style import LOOKS, PLAIN, STYLES

WIDTH, HEIGHT = 160, 120
SEED = 7
COUNTS = {"train": 5, "val": 2}  # train image 3 is one of the empty ones (index % EMPTY_EVERY == 3)


def generate(directory, style, seed=SEED):
    return synthetic.generate_dataset(directory, COUNTS["train"], COUNTS["val"], seed, WIDTH, HEIGHT, style)


@pytest.fixture(scope="module", params=list(STYLES))
def style(request):
    return STYLES[request.param]


@pytest.fixture(scope="module")
def root(tmp_path_factory, style):
    return generate(tmp_path_factory.mktemp("synthetic"), style)


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
def test_annotations_are_the_rendered_masks(root, style, split):
    coco = load(root, split)
    assert coco.dataset["info"]["style"] == style.to_json()
    for image in coco.dataset["images"]:
        scene = synthetic.dataset_scene(SEED, split, image["id"] - 1, WIDTH, HEIGHT, style)
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


def test_same_seed_same_bytes_other_seed_differs(root, style, tmp_path):
    again = files(generate(tmp_path / "again", style))
    assert again == files(root)
    other = files(generate(tmp_path / "other", style, seed=SEED + 1))
    assert other.keys() == again.keys()
    assert all(other[name] != again[name] for name in again if name.suffix in (".jpg", ".json"))


def test_worker_processes_write_the_same_bytes(tmp_path):
    """Scenes rendered in two processes (9 images: a chunk each) land in the same files as in one."""
    alone = synthetic.generate_dataset(tmp_path / "alone", 9, 2, SEED, WIDTH, HEIGHT, STYLES["full"])
    pooled = synthetic.generate_dataset(tmp_path / "pooled", 9, 2, SEED, WIDTH, HEIGHT, STYLES["full"], workers=2)
    assert files(pooled) == files(alone)


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
def test_depth_agrees_with_the_3d_cartons(root, style, split):
    coco = load(root, split)
    checked = 0
    for image in coco.dataset["images"]:
        scene = synthetic.dataset_scene(SEED, split, image["id"] - 1, WIDTH, HEIGHT, style)
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
    assert load(root, "train").dataset["info"]["style"] == STYLES["full"].to_json(), "the recipe by default"
    shifted = tmp_path / "shifted"
    args = ["--out", shifted, "--train", "0", "--val", "1", "--width", "64", "--height", "48", "--style", "shifted",
            "--tight", "1", "--preview", tmp_path / "preview.jpg"]
    subprocess.run([sys.executable, script, *map(str, args)], check=True, capture_output=True)
    assert cv2.imread(str(tmp_path / "preview.jpg")).shape == (48, 64, 3)
    info = json.loads((shifted / "coco_carton/oneclass_carton/annotations/instances_val2017.json").read_text())["info"]
    assert info["style"] == replace(STYLES["shifted"], tight=1.0).to_json()
    refused = subprocess.run([sys.executable, script, "--out", tmp_path, "--sensor", "2"], capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "sensor" in refused.stderr


# ----------------------------------------------------------------------------------------------------
# The style switches, one at a time


def scenes(switch, kind, seeds=range(4), size=(WIDTH, HEIGHT)):
    return [synthetic.render_scene(seed, *size, kind, PLAIN.only(switch)) for seed in seeds]


@pytest.mark.parametrize("kind", ["pallet", "loose", "empty"])
def test_negatives_are_seen_and_never_annotated(kind):
    for scene in scenes("negatives", kind):
        assert scene.distractor.mean() > 0.01, "a cabinet or a look-alike case is in view"
        assert not scene.labels[scene.distractor].any(), "no look-alike pixel belongs to a carton"
        annotated = {a["id"] for a in synthetic.annotate(scene, 1, 1)}
        assert len(annotated) == len(scene.visible_labels())


def test_negatives_cabinet_stands_clear_and_cases_are_not_cartons():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        boxes, _ = layout.pallet_layout(rng, PLAIN)
        cartons = sum(b.material == "carton" for b in boxes)
        changed = layout.negatives(rng, "train", boxes)
        cabinet = changed[-1]
        assert cabinet.material == "cabinet" and cabinet.distractor and cabinet.center[2] == cabinet.size[2] / 2
        low, high = layout.corners(changed[:-1])[:, :2].min(0), layout.corners(changed[:-1])[:, :2].max(0)
        reach = layout.footprint(cabinet.size, cabinet.yaw)
        assert ((cabinet.center[:2] + reach <= low) | (cabinet.center[:2] - reach >= high)).any(), "beside, not in"
        cases = [b for b in changed[:-1] if b.distractor]
        assert all(b.material != "carton" and b.sku is None for b in cases)
        assert sum(b.material == "carton" for b in changed) == cartons - len(cases)


@pytest.mark.parametrize("kind", ["trunk", "shelf"])
def test_interiors_are_upholstered_and_never_annotated(kind):
    for scene in scenes("interiors", kind):
        assert scene.distractor.mean() > 0.05 and not scene.labels[scene.distractor].any()
        assert scene.visible_labels(), "the cartons are still there"


def test_weave_patterns_modulate_brightness():
    s = np.linspace(0, 0.05, 500)
    for kind in ("woven", "ribbed", "quilted"):
        pattern = np.tile([render.PATTERNS[kind], 0.01, 0.2], (len(s), 1))
        factor = render.weave(pattern, s, s * 0.3)
        assert factor.min() < 0.9 and factor.max() > 1.05, kind
    assert (render.weave(np.zeros((len(s), 3)), s, s) == 1).all(), "no pattern, no change"


@pytest.mark.parametrize("switch", ["printed", "lighting", "sensor"])
def test_paint_switches_keep_masks_and_depth(switch):
    """These switches draw after the geometry: same seed, same masks, depth and 3D truth; other pixels."""
    for seed in range(3):
        plain = synthetic.render_scene(seed, WIDTH, HEIGHT, "pallet")
        switched = synthetic.render_scene(seed, WIDTH, HEIGHT, "pallet", PLAIN.only(switch))
        assert np.array_equal(plain.labels, switched.labels) and np.array_equal(plain.depth, switched.depth)
        assert np.array_equal(plain.top_face, switched.top_face)
        assert [c.to_json() for c in plain.cartons] == [c.to_json() for c in switched.cartons]
        cartons = plain.labels > 0
        difference = np.abs(plain.image.astype(int) - switched.image.astype(int))[cartons].mean()
        assert difference > 5, f"{switch} changes how the cartons look"


def test_printed_cartons_of_a_type_share_their_print():
    style = replace(PLAIN, printed=1.0, tight=1.0)  # a pallet layer of identical printed cartons
    rng = np.random.default_rng(3)
    design = render.print_design(rng, "train")
    sku = layout.Sku(np.array([0.4, 0.3, 0.25]), np.array([0.7, 0.55, 0.4]))
    box = layout.carton(rng, sku, 0, 0, 0, 0.0, identical=True)
    faces = [render.carton_faces(rng, box, 1, design) for _ in range(2)]
    for a, b in zip(*faces, strict=True):
        printed = [d for d in a.decals if d[6] > render.DECALS["label"]]
        assert printed == [d for d in b.decals if d[6] > render.DECALS["label"]]
        assert np.array_equal(a.color, b.color)
    sides = [f for f in faces[0] if not f.top and f.extent[1] == 0.25 and f.extent[0] == 0.4]
    assert all(any(d[6] == render.DECALS["text"] for d in f.decals) for f in sides), "large text on the sides"
    scene = synthetic.render_scene(1, 320, 240, "pallet", style)
    assert len(scene.visible_labels()) >= 2


def layer_gaps(boxes, aligned=1e-6):
    """Gaps between neighbouring cartons of each layer, along the layer's rows and columns (metres);
    `aligned`: how far off a row a neighbour may be."""
    gaps = []
    for carton in boxes:
        reach = layout.footprint(carton.size, carton.yaw)
        for other in boxes:
            if other is carton or abs(other.center[2] - carton.center[2]) > 1e-9:
                continue
            offset = np.abs(other.center[:2] - carton.center[:2])
            span = reach + layout.footprint(other.size, other.yaw)
            for axis in (0, 1):
                if offset[1 - axis] < aligned and offset[axis] < span[axis] + 0.05:
                    gaps.append(offset[axis] - span[axis])
    return np.array(gaps)


def test_tight_packing_leaves_at_most_3_mm_between_identical_cartons():
    tight, plain = [], []
    for seed in range(8):
        boxes, _ = layout.pallet_layout(np.random.default_rng(seed), PLAIN.only("tight"))
        cartons = [b for b in boxes if b.material == "carton"]
        tight.append(layer_gaps(cartons))
        assert all(b.yaw in (0.0, math.pi / 2) for b in cartons), "square to each other"
        for layer in {b.center[2] for b in cartons}:
            colours = {tuple(b.color) for b in cartons if b.center[2] == layer}
            assert len(colours) == 1, "identical cartons in a layer"
        rng = np.random.default_rng(seed)
        sku = layout.carton_sku(rng)
        plain.append(layer_gaps(layout.carton_layer(rng, sku, 0.0), aligned=0.03))
    tight = np.concatenate(tight)
    assert len(tight) > 20 and tight.min() >= -1e-9 and tight.max() <= 0.003 + 1e-9
    assert np.concatenate([g for g in plain if len(g)]).max() > 0.003, "the plain generator leaves more room"


def test_tight_neighbours_stay_separate_instances():
    for scene in scenes("tight", "pallet", seeds=range(3), size=(320, 240)):
        labels = scene.labels
        touching = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
        assert touching.any(), "neighbouring cartons touch in the image"
        assert len(scene.visible_labels()) >= 2


def test_several_sizes_put_big_cartons_beside_a_pallet_of_small_ones():
    for seed in range(6):
        boxes, _ = layout.pallet_layout(np.random.default_rng(seed), PLAIN.only("sizes"))
        cartons = [b for b in boxes if b.material == "carton"]
        areas = [b.size[0] * b.size[1] for b in cartons]
        assert max(areas) > 3 * min(areas)
        on_floor = [b for b in cartons if abs(b.center[2] - b.size[2] / 2) < 1e-9]
        assert on_floor, "big cartons stand on the floor"
        pallet = np.abs(layout.corners([b for b in boxes if b.material == "wood"])[:, :2]).max(0)
        for carton in on_floor:
            reach = layout.footprint(carton.size, carton.yaw)
            assert (np.abs(carton.center[:2]) - reach >= pallet - 1e-9).any(), "beside the pallet, not in it"


def test_border_crops_are_annotated_truncated():
    truncated = 0
    for scene in scenes("border", "pallet", seeds=range(6)):
        camera = scene.camera
        for label in scene.visible_labels():
            mask = scene.labels == label
            if not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()):
                continue
            carton = scene.cartons[label - 1]
            signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 0])).reshape(3, -1).T  # top and bottom corners
            corners = carton.top_center + (signs * carton.size / [2, 2, 1]) @ carton.rotation.T
            u = corners[:, 0] / corners[:, 2] * camera.fx + camera.cx
            v = corners[:, 1] / corners[:, 2] * camera.fy + camera.cy
            outside = (u < 0) | (u > camera.width - 1) | (v < 0) | (v > camera.height - 1) | (corners[:, 2] <= 0)
            truncated += outside.any()
    assert truncated >= 6, "cartons cut by the image border are annotated"


def test_in_shadow_is_the_side_away_from_the_sun():
    cube = layout.Box(np.array([0, 0, 0.5]), np.ones(3), 0.3, "metal", np.zeros(3))
    sun = np.array([math.cos(math.radians(45)), 0, math.sin(math.radians(45))])
    turn = layout.rot_z(0.3)
    points = np.array([[-0.75, 0, 0], [-1.45, 0, 0], [-1.6, 0, 0], [0.8, 0, 0], [0, 0, 1.0], [0, -0.8, 0]])
    points[:, :2] = points[:, :2] @ turn[:2, :2].T  # the cube is turned; its shadow turns with it
    cube_frame = layout.Box(np.array([0, 0, 0.5]), np.ones(3), 0.0, "metal", np.zeros(3))
    sun_turned = turn @ sun
    assert render.in_shadow(points, [cube], sun_turned).tolist() == [True, True, False, False, False, False]
    assert not render.in_shadow(points, [cube_frame], np.array([0, 0, 1.0]))[[2, 3, 5]].any()


def test_lighting_casts_shadows_in_the_scene():
    dark = 0
    for seed in range(4):
        plain = synthetic.render_scene(seed, 320, 240, "pallet")
        lit = synthetic.render_scene(seed, 320, 240, "pallet", PLAIN.only("lighting"))
        floor = (plain.labels == 0) & (plain.depth > 0)
        ratio = lit.image.mean(2)[floor] / np.maximum(plain.image.mean(2)[floor], 1)
        dark += (ratio < 0.6 * np.median(ratio)).mean() > 0.01  # shadowed floor is much darker than the rest
    assert dark >= 2


def test_sensor_effects_blur_compress_and_add_signal_dependent_noise():
    checker = (np.indices((96, 128)).sum(0) // 8 % 2 * 200.0 + 20).astype(np.float32)[..., None].repeat(3, 2)
    columns = checker.transpose(1, 0, 2)[:96, :96].copy()
    columns[:] = columns[:1]  # stripes across the motion: smeared
    rows = columns.transpose(1, 0, 2).copy()  # stripes along it: kept
    assert np.abs(np.diff(render.motion_blur(columns, 9, 0.0), axis=1)).max() < 0.2 * 200
    assert np.abs(np.diff(render.motion_blur(rows, 9, 0.0), axis=0)).max() == pytest.approx(200)
    compressed = render.jpeg_artefacts(checker, 15)
    assert np.abs(compressed - checker).mean() > 1 and abs(compressed.mean() - checker.mean()) < 5
    dark, bright = (render.shot_noise(np.random.default_rng(0), np.full((64, 64, 3), level, np.float32), 0.5)
                    for level in (20.0, 180.0))
    assert bright.std() / dark.std() == pytest.approx(3, rel=0.1), "shot noise grows with the signal's root"
    for seed in range(4):  # all of it together: still an image of the same size and brightness
        degraded = render.sensor_effects(np.random.default_rng(seed), checker)
        assert degraded.shape == checker.shape and abs(degraded.mean() - checker.mean()) < 5


def test_poses_go_from_top_down_to_oblique():
    view = layout.View(np.array([0, 0, 0.5]), 1.0, 1.0, (0, 2 * math.pi), (25, 85))
    elevations = []
    for seed in range(300):
        camera = layout.sample_camera(np.random.default_rng(seed), view, 160, 120, PLAIN.only("poses"))
        rotation = camera.rotation
        assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1)
        elevations.append(math.degrees(math.asin(-rotation[2] @ layout.UP)))
    assert min(elevations) < 15 and max(elevations) > 89.999, "from near the horizon to straight down"
    top_down = next(s for s in (synthetic.render_scene(seed, 320, 240, "pallet", PLAIN.only("poses"))
                                for seed in range(40)) if s.camera.rotation[2] @ layout.UP < -0.99999)
    labels = top_down.visible_labels()
    tops = [top_down.top_face & (top_down.labels == k) for k in labels]
    cartons = [top_down.cartons[k - 1].to_json() for k in labels]
    assert check_top_faces(top_down.depth, top_down.camera.intrinsics(), tops, cartons) > 0


def test_shifted_look_shares_no_palette_texture_light_or_distractor_with_training():
    train, shifted = LOOKS["train"], LOOKS["shifted"]
    assert not set(train["cardboard"].values()) & set(shifted["cardboard"].values())
    for table in ("print", "ink", "floor", "wall", "machine", "upholstery", "clutter"):
        assert not set(train[table]) & set(shifted[table]), table
    (low, high), = train["white_balance"]
    assert all(high < a or b < low for a, b in shifted["white_balance"])
    assert train["noise_beta"] != shifted["noise_beta"]
    assert STYLES["shifted"] == replace(STYLES["full"], look="shifted")


def test_bad_style_is_refused_by_name():
    with pytest.raises(ValueError, match="printed"):
        replace(PLAIN, printed=1.5)
    with pytest.raises(ValueError, match="look"):
        replace(PLAIN, look="sepia")
