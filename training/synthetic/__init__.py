"""Synthetic stacked-carton scenes: layout (boxes and camera), render (pixels, masks, depth), dataset (files).

The CLI is training/generate_synthetic.py. What other code uses is imported here.
"""

from synthetic.dataset import EMPTY_EVERY, annotate, dataset_scene, encode_jpeg, generate_dataset, overlay
from synthetic.render import MIN_VISIBLE_PIXELS, Scene, render_scene

__all__ = ["EMPTY_EVERY", "MIN_VISIBLE_PIXELS", "Scene", "annotate", "dataset_scene", "encode_jpeg",
           "generate_dataset", "overlay", "render_scene"]
