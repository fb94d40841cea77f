"""The seed augmentations keep image, masks and boxes consistent, pixel for pixel."""

import torch
from augment import eval_transforms, train_transforms
from coco_data import boxes_from_masks
from torchvision import tv_tensors


def sample():
    """An image whose red channel is mask 0 and green channel mask 1: any misalignment shows."""
    masks = torch.zeros((2, 60, 80), dtype=torch.uint8)
    masks[0, 10:30, 5:25] = 1
    masks[1, 25:55, 40:75] = 1
    image = torch.zeros((3, 60, 80), dtype=torch.uint8)
    image[0], image[1] = masks[0] * 255, masks[1] * 255
    image[2] = 64
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes_from_masks(masks), format="XYXY", canvas_size=(60, 80)),
        "masks": tv_tensors.Mask(masks),
        "labels": torch.tensor([1, 1]),
        "image_id": 7,
    }
    return tv_tensors.Image(image), target


def iou(a, b):
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def test_train_transforms_move_image_masks_and_boxes_together():
    original_image, original = sample()
    seen = set()
    for seed in range(24):
        torch.manual_seed(seed)
        image, target = train_transforms()(*sample())
        assert image.dtype == torch.float32 and image.shape == (3, 60, 80) and target["image_id"] == 7
        masks = target["masks"].bool()
        assert len(masks) == len(target["labels"]) == len(target["boxes"]) == 2
        # Boxes are the masks' tight boxes, not the hull of warped corners.
        assert torch.equal(target["boxes"].as_subclass(torch.Tensor), boxes_from_masks(masks))
        for channel in (0, 1):
            drawn = image[channel] > 0.4  # posterize and equalize keep 0 dark and 255 bright
            assert iou(drawn, masks[channel]) > 0.9, (seed, channel)
        flipped = torch.equal(masks, original["masks"].flip(-1).bool())
        unchanged = torch.equal(masks, original["masks"].bool())
        if flipped:
            # Flip alone is exact, pixel for pixel.
            assert torch.equal(image[:2] > 0.4, original_image[:2].flip(-1) > 127)
            assert target["boxes"][0].tolist() == [80 - 25, 10, 80 - 5, 30]
        seen.add("flip" if flipped else "none" if unchanged else "warp")
    assert seen == {"flip", "none", "warp"}  # every branch was exercised


def test_instances_warped_away_are_dropped_with_their_masks():
    image, target = sample()
    target["masks"][1] = 0  # e.g. a sliver that rasterised to nothing
    image, target = train_transforms()(image, target)
    assert len(target["masks"]) == len(target["labels"]) == len(target["boxes"]) == 1


def test_eval_transforms_only_scale_the_image():
    image, target = eval_transforms()(*sample())
    assert image.dtype == torch.float32 and image.max() == 1.0
    assert target["masks"].dtype == torch.uint8 and target["boxes"][0].tolist() == [5, 10, 25, 30]
