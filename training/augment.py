"""The seed recipe's augmentations, with transforms v2 so image, masks and boxes move together."""

import cv2
import numpy as np
import torch
from coco_data import boxes_from_masks
from torchvision import tv_tensors
from torchvision.transforms import v2

# torchvision's perspective coefficients map an output point to its source with pixel centres at
# (u + 0.5, v + 0.5); OpenCV's matrices put them at (u, v).
_CENTRES_TO_EDGES = np.array([[1.0, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
_EDGES_TO_CENTRES = np.linalg.inv(_CENTRES_TO_EDGES)


class RandomPerspective(v2.RandomPerspective):
    """v2.RandomPerspective, with masks warped as uint8 by OpenCV, each only over its own box.

    torchvision warps masks with float grid_sample over the whole frame, every instance: at
    640x480 with 20 cartons that is most of a sample's time. OpenCV's nearest-neighbour warp with
    the same matrix gives the same pixels (test_augment), reading and writing bytes, and only
    where the mask can land. Images and boxes go through torchvision unchanged; masks are filled
    with 0 outside the source, as torchvision's default fill does.
    """

    def transform(self, inpt, params):
        if not isinstance(inpt, tv_tensors.Mask):
            return super().transform(inpt, params)
        warped = warp_masks(inpt.as_subclass(torch.Tensor), params["coefficients"])
        return tv_tensors.wrap(warped, like=inpt)


def warp_masks(masks: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
    """(N, H, W) masks warped by torchvision's perspective coefficients (output -> source), nearest pixel."""
    height, width = masks.shape[-2:]
    to_source = _EDGES_TO_CENTRES @ np.append(coefficients, 1.0).reshape(3, 3) @ _CENTRES_TO_EDGES
    to_output = np.linalg.inv(to_source)
    source = masks.to(torch.uint8).numpy()
    warped = np.zeros_like(source)
    for mask, out in zip(source, warped, strict=True):
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0:
            continue
        # Output pixels whose nearest source pixel lies in the box: inside the warped box grown by a pixel.
        corners = np.array([[[x - 1, y - 1], [x + w, y - 1], [x + w, y + h], [x - 1, y + h]]], dtype=np.float64)
        landed = cv2.perspectiveTransform(corners, to_output)[0]
        x0, y0 = np.maximum(np.floor(landed.min(axis=0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(landed.max(axis=0)).astype(int) + 1, (width, height))
        if x1 <= x0 or y1 <= y0:
            continue
        from_roi = to_source @ np.array([[1.0, 0, x0], [0, 1, y0], [0, 0, 1]])  # roi pixel -> frame pixel first
        out[y0:y1, x0:x1] = cv2.warpPerspective(mask, from_roi, (int(x1 - x0), int(y1 - y0)),
                                                flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return torch.from_numpy(warped).to(masks.dtype)


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
        RandomPerspective(distortion_scale=0.3, p=0.5),
        recompute_boxes,
        v2.SanitizeBoundingBoxes(),  # drops instances warped out of the image with their masks and labels
        v2.ToDtype(torch.float32, scale=True),
    ])


def eval_transforms() -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])
