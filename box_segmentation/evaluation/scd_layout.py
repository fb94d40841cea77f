"""SCD's folder layout (the OSCD archive's), which real and synthetic datasets share.

    DATA/coco_carton/oneclass_carton/images/{train2017,val2017}/*.jpg
    DATA/coco_carton/oneclass_carton/annotations/instances_{train,val}2017.json
"""

from pathlib import Path

SPLITS = {"train": "train2017", "val": "val2017"}


def dataset_root(data) -> Path:
    return Path(data) / "coco_carton" / "oneclass_carton"


def split_paths(data, split: str) -> tuple[Path, Path]:
    """(images folder, annotations json) of a split."""
    root = dataset_root(data)
    return root / "images" / SPLITS[split], root / "annotations" / f"instances_{SPLITS[split]}.json"
