"""Synthetic stacked-carton scenes in the COCO layout of SCD's OSCD subset, rendered from 3D geometry.

Cartons are cuboids stacked in layers on a pallet, in loose piles, in a car trunk or on shelves. A pinhole
camera looks at them; every cuboid face is rasterised as a polygon into a z-buffer with its exact plane
depth, so each carton's mask is what the camera sees of it after occlusion (top and side faces together,
as SCD annotates), and the depth image and intrinsics come from the same geometry.

    python training/generate_synthetic.py --out data/synthetic --train 2000 --val 200 --seed 0
    python training/generate_synthetic.py --out data/shifted --train 0 --val 60 --seed 1000 --style shifted

writes, under DIR/coco_carton/oneclass_carton/:

    images/{train2017,val2017}/000000.jpg           RGB image
    images/{train2017,val2017}_depth/000000.png     aligned depth, uint16 millimetres (0 = no surface)
    annotations/instances_{train,val}2017.json     COCO, one category {"id": 1, "name": "carton"}

Extra keys, which COCO tools ignore: each image has "camera": {"fx", "fy", "cx", "cy"} (pixels) and
"depth_file" (relative to images/), "scene" (layout kind); each annotation has "carton_3d": {"top_center",
"top_normal", "rotation", "size"} in the camera frame (metres).

Conventions: camera frame x right, y down, z forward (OpenCV). Intrinsics put pixel (u, v)'s centre at
integer u, v, so a pixel back-projects to X = (u - cx) * Z / fx, Y = (v - cy) * Z / fy with Z its depth
(distance along the optical axis). Masks are COCO RLE (pycocotools), exact to the pixel.
One image in EMPTY_EVERY (index 3, 23, 43, ...) has no cartons. Same seed (and style), same bytes.

--style picks the switches (synthetic/style.py): "full" (the training recipe, default), "plain" (the
generator before the switches: cartons, pallets, shelves, a trunk, clutter; what the library's
generate_dataset renders by default), "shifted" (full's content in palettes, textures, light and
distractors that "full" never uses: a validation split for how far a model carries). Each switch flag
overrides the chosen style's odds, e.g. `--style plain --printed 1` for printed cartons alone.
"""

import argparse
import os
from dataclasses import replace
from pathlib import Path

from synthetic import STYLES, SWITCHES, dataset_scene, encode_jpeg, generate_dataset, overlay
from synthetic.dataset import contact_sheet


def main():
    parser = argparse.ArgumentParser(description="Synthetic stacked-carton scenes in SCD's OSCD COCO layout.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, help="dataset directory (gets coco_carton/...); required unless --sheet")
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    parser.add_argument("--width", type=int, default=640, help="image width in pixels")
    parser.add_argument("--height", type=int, default=480, help="image height in pixels")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="processes rendering scenes; the files do not depend on it")
    parser.add_argument("--preview", type=Path, help="also write the first training image with its masks drawn")
    parser.add_argument("--style", choices=STYLES, default="full", help="preset of the switches below")
    for switch, meaning in SWITCHES.items():
        parser.add_argument(f"--{switch}", type=float, metavar="ODDS", default=argparse.SUPPRESS,
                            help=f"odds in [0, 1] (default: the style's): {meaning}")
    parser.add_argument("--sheet", type=Path, help="only write a contact sheet of every switch (README's picture)")
    args = parser.parse_args()
    if not (args.out or args.sheet):
        parser.error("--out is required (or --sheet)")
    if args.sheet:
        args.sheet.write_bytes(encode_jpeg(contact_sheet(args.seed), quality=60))
        return
    overrides = {switch: getattr(args, switch) for switch in SWITCHES if hasattr(args, switch)}
    try:
        style = replace(STYLES[args.style], **overrides)
    except ValueError as error:
        parser.error(str(error))
    root = generate_dataset(args.out, args.train, args.val, args.seed, args.width, args.height, style,
                            max(args.workers, 1))
    if args.preview:
        scene = dataset_scene(args.seed, "train", 0, args.width, args.height, style)
        args.preview.write_bytes(encode_jpeg(overlay(scene), quality=80))
    print(root)


if __name__ == "__main__":
    main()
