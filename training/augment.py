"""The seed recipe's augmentations, with transforms v2 so image, masks and boxes move together."""

import torch
from coco_data import boxes_from_masks
from torchvision import tv_tensors
from torchvision.transforms import v2


def recompute_boxes(image, target):
    """Boxes tight around the (warped) masks: a warped box is the hull of its corners, looser than the carton."""
    boxes = target["boxes"]
    target["boxes"] = tv_tensors.wrap(boxes_from_masks(target["masks"]), like=boxes)
    return image, target


def train_transforms() -> v2.Compose:
    return v2.Compose([
        # Photometric, on uint8: lighting and camera differences.
        v2.RandomEqualize(p=0.2),
        v2.RandomPosterize(bits=3, p=0.5),
        # Geometric: masks and boxes follow the image.
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomPerspective(distortion_scale=0.3, p=0.5),
        recompute_boxes,
        v2.SanitizeBoundingBoxes(),  # drops instances warped out of the image with their masks and labels
        v2.ToDtype(torch.float32, scale=True),
    ])


def eval_transforms() -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])
