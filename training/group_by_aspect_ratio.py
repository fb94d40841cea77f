"""Batches of images with similar aspect ratios, as in torchvision's detection references.

The model pads a batch to its largest image: mixing portrait and landscape images wastes compute.
"""

import math

import numpy as np
import torch


def aspect_ratio_groups(aspect_ratios: list[float], group_factor: int = 3) -> list[int]:
    """Group index of each image: width/height quantised on 2 * group_factor log-spaced bins."""
    bins = 2 ** np.linspace(-1, 1, 2 * group_factor + 1)
    return np.digitize(aspect_ratios, bins).tolist()


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Batches from sampler's indices where each batch holds one group, except the leftovers of the
    epoch, batched together at the end: ceil(len(sampler) / batch_size) batches, like a plain sampler."""

    def __init__(self, sampler, group_ids: list[int], batch_size: int):
        self.sampler, self.group_ids, self.batch_size = sampler, group_ids, batch_size

    def __iter__(self):
        buffers = {}
        for index in self.sampler:
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield buffer[:]
                buffer.clear()
        leftovers = [index for buffer in buffers.values() for index in buffer]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)
