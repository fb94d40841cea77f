"""Synthetic stacked-carton scenes: layout (boxes and camera), render (pixels, masks, depth), dataset (files).

The CLI is training/generate_synthetic.py. What other code uses is imported here.
"""

from synthetic.dataset import EMPTY_EVERY, annotate, dataset_scene, encode_jpeg, generate_dataset, overlay
from synthetic.render import MIN_VISIBLE_PIXELS, Scene, render_scene
from synthetic.style import STYLES, SWITCHES, Style

__all__ = ["EMPTY_EVERY", "MIN_VISIBLE_PIXELS", "STYLES", "SWITCHES", "Scene", "Style", "annotate", "dataset_scene",
           "encode_jpeg", "generate_dataset", "overlay", "render_scene"]
