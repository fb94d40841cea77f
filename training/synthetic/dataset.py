"""Dataset writing: scenes as JPEG images, depth PNGs and COCO annotations (RLE masks) in SCD's OSCD layout."""

import json
import multiprocessing
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from box_segmentation.evaluation.scd_layout import dataset_root, split_paths
from synthetic.render import render_scene
from synthetic.style import PLAIN, STYLES

EMPTY_EVERY = 20
SPLITS = {"train": 0, "val": 1}  # split name -> seed stream
CATEGORY = {"id": 1, "name": "carton", "supercategory": "carton"}
JPEG_QUALITY = 90


def annotate(scene, image_id, first_id):
    """COCO annotations of the scene's visible cartons (RLE masks), with their 3D truth under "carton_3d"."""
    annotations = []
    for n, label in enumerate(scene.visible_labels()):
        mask = scene.labels == label
        rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
        annotations.append({
            "id": first_id + n,
            "image_id": image_id,
            "category_id": CATEGORY["id"],
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": int(mask.sum()),
            "bbox": [x, y, w, h],
            "iscrowd": 0,
            "carton_3d": scene.cartons[label - 1].to_json(),
        })
    return annotations


def dataset_scene(seed, split, index, width=640, height=480, style=PLAIN):
    """The scene behind image `index` of a split generated with `seed` (each has its own random stream)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    return render_scene(rng, width, height, "empty" if index % EMPTY_EVERY == 3 else None, style)


def encode_jpeg(rgb, quality=JPEG_QUALITY):
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def render_entry(seed, split, index, width, height, style):
    """Image `index` of a split, encoded: (JPEG bytes, depth PNG bytes, COCO image without its
    "depth_file", its annotations with ids from 1). It needs only its arguments: worker processes run it."""
    scene = dataset_scene(seed, split, index, width, height, style)
    stem = f"{index:06d}"
    image = {"id": index + 1, "file_name": f"{stem}.jpg", "width": width, "height": height,
             "camera": scene.camera.intrinsics(), "scene": scene.kind}
    depth_png = cv2.imencode(".png", scene.depth)[1].tobytes()
    return encode_jpeg(scene.image), depth_png, image, annotate(scene, index + 1, 1)


def write_split(out, split, count, seed, width, height, style, workers=1):
    images_dir, annotations_path = split_paths(out, split)
    depth_dir = images_dir.with_name(f"{images_dir.name}_depth")
    for folder in (images_dir, depth_dir, annotations_path.parent):
        folder.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, split, index, width, height, style) for index in range(count)]
    images, annotations = [], []
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else nullcontext() as pool:
        # imap keeps the order of the indices: the files and json are the same bytes for any worker count
        entries = pool.imap(_render_job, jobs, chunksize=8) if pool else map(_render_job, jobs)
        for jpeg, depth_png, image, image_annotations in entries:
            depth_file = f"{Path(image['file_name']).stem}.png"
            (images_dir / image["file_name"]).write_bytes(jpeg)
            (depth_dir / depth_file).write_bytes(depth_png)
            image["depth_file"] = f"{depth_dir.name}/{depth_file}"
            images.append(image)
            for annotation in image_annotations:
                annotation["id"] += len(annotations)
            annotations += image_annotations
    coco = {"info": {"description": "synthetic stacked cartons, SCD/OSCD layout", "version": "1.0",
                     "style": style.to_json()},
            "licenses": [], "categories": [CATEGORY], "images": images, "annotations": annotations}
    annotations_path.write_text(json.dumps(coco, sort_keys=True, separators=(",", ":")))


def _render_job(job):
    return render_entry(*job)


def generate_dataset(out, train, val, seed, width=640, height=480, style=PLAIN, workers=1):
    """Write `train` and `val` images in SCD's OSCD layout under out; returns the oneclass_carton root.
    style: the generator's switches (synthetic.style); the default is the plain generator. workers:
    processes rendering scenes (each scene has its own random stream, so the output does not change)."""
    write_split(out, "train", train, seed, width, height, style, workers)
    write_split(out, "val", val, seed, width, height, style, workers)
    return dataset_root(out)


def overlay(scene):
    """The image with each annotated carton tinted and outlined, for looking at."""
    out = scene.image.copy()
    palette = np.random.default_rng(0).uniform(40, 255, (len(scene.cartons) + 1, 3))
    for label in scene.visible_labels():
        mask = scene.labels == label
        out[mask] = out[mask] // 2 + (palette[label] / 2).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


SHOWCASE = {"negatives": "pallet", "interiors": "trunk", "printed": "pallet", "tight": "pallet", "sizes": "pallet",
            "border": "loose", "lighting": "pallet", "sensor": "loose", "poses": "pallet"}


def contact_sheet(seed, tile=(256, 192), columns=4):
    """Twelve pictures, annotated cartons outlined in green: the plain generator, each switch alone (at
    odds 1), the full and the shifted styles; for the README."""
    tiles = []
    for name, kind in [("plain", "pallet"), *SHOWCASE.items(), ("full", None), ("shifted", None)]:
        style = STYLES[name] if name in STYLES else PLAIN.only(name)
        scene = render_scene(np.random.default_rng([seed, len(tiles)]), *tile, kind, style)
        picture = scene.image.copy()
        for label in scene.visible_labels():
            contours, _ = cv2.findContours((scene.labels == label).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(picture, contours, -1, (0, 255, 0), 1)
        (width, height), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.rectangle(picture, (0, 0), (width + 10, height + 10), (0, 0, 0), -1)
        cv2.putText(picture, name, (5, height + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(picture)
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)
