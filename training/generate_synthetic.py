"""Synthetic stacked-carton scenes in the COCO layout of SCD's OSCD subset, rendered from 3D geometry.

Cartons are cuboids stacked in layers on a pallet, in loose piles, in a car trunk or on shelves. A pinhole
camera looks at them; every cuboid face is rasterised as a polygon into a z-buffer with its exact plane
depth, so each carton's mask is what the camera sees of it after occlusion (top and side faces together,
as SCD annotates), and the depth image and intrinsics come from the same geometry.

    python training/generate_synthetic.py --out data/synthetic --train 2000 --val 200 --seed 0

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
One image in EMPTY_EVERY (index 3, 23, 43, ...) has no cartons. Same seed, same bytes.
"""

import argparse
from pathlib import Path

from synthetic import dataset_scene, encode_jpeg, generate_dataset, overlay


def main():
    parser = argparse.ArgumentParser(description="Synthetic stacked-carton scenes in SCD's OSCD COCO layout.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="dataset directory (gets coco_carton/...)")
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    parser.add_argument("--width", type=int, default=640, help="image width in pixels")
    parser.add_argument("--height", type=int, default=480, help="image height in pixels")
    parser.add_argument("--preview", type=Path, help="also write the first training image with its masks drawn")
    args = parser.parse_args()
    root = generate_dataset(args.out, args.train, args.val, args.seed, args.width, args.height)
    if args.preview:
        scene = dataset_scene(args.seed, "train", 0, args.width, args.height)
        args.preview.write_bytes(encode_jpeg(overlay(scene), quality=80))
    print(root)


if __name__ == "__main__":
    main()
