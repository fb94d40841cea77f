"""The seed augmentations keep image, masks and boxes consistent, pixel for pixel."""

import torch
from augment import RandomPerspective, eval_transforms, train_transforms
from coco_data import boxes_from_masks
from torchvision import tv_tensors
from torchvision.transforms import v2


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


def test_uint8_mask_warp_gives_torchvision_pixels():
    """Same coefficients through ours (OpenCV, per box) and torchvision's (float grid_sample, full frame)."""
    generator = torch.Generator().manual_seed(0)
    height, width = 96, 128
    ours, theirs = RandomPerspective(distortion_scale=0.3, p=1.0), v2.RandomPerspective(distortion_scale=0.3, p=1.0)
    differing = total = 0
    for _ in range(5):
        masks = torch.zeros((12, height, width), dtype=torch.uint8)
        for mask in masks:  # rectangles anywhere, some cut by the border, one left empty
            x, y = torch.randint(-20, width, (2,), generator=generator).tolist()
            w, h = torch.randint(1, 60, (2,), generator=generator).tolist()
            mask[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = 1
        masks[0] = 0
        masks = tv_tensors.Mask(masks)
        params = ours.make_params([masks])
        warped, expected = ours.transform(masks, params), theirs.transform(masks, params)
        assert isinstance(warped, tv_tensors.Mask) and warped.dtype == torch.uint8 and warped.shape == masks.shape
        differing += int((warped != expected).sum())
        total += int(expected.sum())
        image = tv_tensors.Image(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator))
        assert torch.equal(ours.transform(image, params), theirs.transform(image, params))
    # Nearest-pixel rounding ties may fall the other way (float64 here, float32 there): 5 of 31,396 in 10 frames.
    assert total > 10_000 and differing <= total * 1e-3, (differing, total)
