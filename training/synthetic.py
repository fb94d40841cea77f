"""Synthetic stacked-carton scenes in the COCO layout of SCD's OSCD subset, rendered from 3D geometry.

Cartons are cuboids stacked in layers on a pallet, in loose piles, in a car trunk or on shelves. A pinhole
camera looks at them; every cuboid face is rasterised as a polygon into a z-buffer with its exact plane
depth, so each carton's mask is what the camera sees of it after occlusion (top and side faces together,
as SCD annotates), and the depth image and intrinsics come from the same geometry.

    python training/synthetic.py --out data/synthetic --train 2000 --val 200 --seed 0

writes, under DIR/coco_carton/oneclass_carton/:

    images/{train2017,val2017}/000000.jpg           RGB image
    images/{train2017,val2017}_depth/000000.png     aligned depth, uint16 millimetres (0 = no surface)
    annotations/instances_{train,val}2017.json     COCO, one category {"id": 1, "name": "carton"}

Extra keys, which COCO tools ignore: each image has "camera": {"fx", "fy", "cx", "cy"} (pixels) and
"depth_file" (relative to images/), "scene" (layout kind); each annotation has "carton_3d": {"top_center",
"top_normal", "rotation", "size"} in the camera frame (metres).

Conventions: camera frame x right, y down, z forward (OpenCV). Intrinsics put pixel (u, v)'s centre at
integer u, v, so a pixel back-projects to X = (u - cx) * Z / fx, Y = (v - cy) * Z / fy with Z its depth
(distance along the optical axis). COCO polygons use COCO's own convention (pixel centre at u + 0.5).
One image in EMPTY_EVERY (index 3, 23, 43, ...) has no cartons. Same seed, same bytes.
"""

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from box_segmentation.evaluation.scd_layout import dataset_root, split_paths

MIN_VISIBLE_PIXELS = 30  # cartons showing fewer pixels are not annotated
EMPTY_EVERY = 20
SPLITS = {"train": 0, "val": 1}  # split name -> seed stream
CATEGORY = {"id": 1, "name": "carton", "supercategory": "carton"}
JPEG_QUALITY = 90
NEAR = 0.05  # metres; faces are clipped to this plane in front of the camera
EDGE = 1e-6  # metres of slack when testing whether a pixel's ray meets a face
NOISE_SIZE = 256  # texels per side of the tileable noise texture
UP = np.array([0.0, 0.0, 1.0])
PALLET = np.array([1.2, 0.8, 0.144])  # EUR pallet


# ----------------------------------------------------------------------------------------------------
# Scene description: boxes in a world frame with z up, metres


@dataclass
class Box:
    center: np.ndarray  # (3,)
    size: np.ndarray  # length along the box's x, width along y, height along z
    yaw: float  # rotation about the vertical axis
    material: str  # "carton" or one of the clutter/structure materials in MATERIALS
    color: np.ndarray  # RGB in [0, 1]

    @property
    def top(self):
        return self.center[2] + self.size[2] / 2


@dataclass
class View:
    """Where the camera may stand: around a target, framing a sphere of some radius."""

    target: np.ndarray
    radius: float
    extent: float  # floor distance from the target that clears every box of the layout
    azimuth: tuple  # radians, direction from the target to the camera in the floor plane
    elevation: tuple  # degrees above the horizon


def rot_z(yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def jitter(rng, color, amount=0.04):
    return np.clip(np.asarray(color) * rng.uniform(0.9, 1.1) + rng.normal(0, amount, 3), 0, 1)


def carton_sku(rng):
    """A carton type: size (length >= width) and a cardboard colour."""
    length = rng.uniform(0.22, 0.6)
    size = np.array([length, rng.uniform(0.18, min(length, 0.45)), rng.uniform(0.12, 0.4)])
    kind = rng.choice(["kraft", "dark", "white", "printed"], p=[0.6, 0.15, 0.15, 0.1])
    base = {"kraft": (0.74, 0.56, 0.37), "dark": (0.55, 0.39, 0.26), "white": (0.88, 0.87, 0.84)}
    color = base[kind] if kind in base else rng.uniform(0.5, 0.9, 3)
    return size, jitter(rng, color)


def carton(rng, sku, x, y, base_z, yaw):
    size, color = sku
    return Box(np.array([x, y, base_z + size[2] / 2]), size.copy(), yaw, "carton", jitter(rng, color, 0.015))


def footprint(size, yaw):
    """Half extents of a yawed box's axis-aligned footprint."""
    c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
    return np.array([c * size[0] + s * size[1], s * size[0] + c * size[1]]) / 2


def pallet(rng, x=0.0, y=0.0, yaw=0.0):
    """Deck boards on nine blocks on three runners, as one wooden pallet."""
    wood = jitter(rng, (0.72, 0.6, 0.42))
    length, width, height = PALLET
    parts = [((0, 0, height - 0.011), (length, width, 0.022))]
    parts += [((0, j * 0.35, 0.011), (length, 0.1, 0.022)) for j in (-1, 0, 1)]
    parts += [((i * 0.53, j * 0.35, 0.072), (0.145, 0.1, 0.1)) for i in (-1, 0, 1) for j in (-1, 0, 1)]
    turn = rot_z(yaw)
    return [
        Box(turn @ np.array(offset) + (x, y, 0), np.array(size), yaw, "wood", jitter(rng, wood, 0.02))
        for offset, size in parts
    ]


def carton_layer(rng, sku, base_z):
    """One layer of a pallet: a grid of same-size cartons, all turned the same way."""
    length, width, _ = sku[0]
    turn = rng.random() < 0.5
    step = np.array([width, length] if turn else [length, width]) + rng.uniform(0.0, 0.02)
    counts = np.maximum(1, ((PALLET[:2] + 0.04) // step).astype(int))
    boxes = []
    for i in range(counts[0]):
        for j in range(counts[1]):
            x, y = (np.array([i, j]) - (counts - 1) / 2) * step + rng.normal(0, 0.005, 2)
            yaw = (math.pi / 2 if turn else 0.0) + rng.normal(0, 0.015)
            boxes.append(carton(rng, sku, x, y, base_z, yaw))
    return boxes


def pile(rng, count, area, base_z, max_height, skus):
    """Drop cartons at random spots in an area; one landing on others rests on the highest below it."""
    placed = []
    for _ in range(count):
        for _attempt in range(20):
            sku = skus[rng.integers(len(skus))]
            yaw = rng.uniform(0, math.pi) if rng.random() < 0.4 else rng.choice([0, math.pi / 2])
            yaw += rng.normal(0, 0.03)
            half = footprint(sku[0], yaw)
            room = np.asarray(area) / 2 - half
            if (room < 0).any():
                continue
            xy = rng.uniform(-room, room)
            below = [b for b in placed if (abs(b.center[:2] - xy) < footprint(b.size, b.yaw) + half).all()]
            z = base_z
            if below:
                support = max(below, key=lambda b: b.top)
                if (abs(support.center[:2] - xy) > footprint(support.size, support.yaw) * 0.8).any():
                    continue  # would hang off its support
                z = support.top
            if z + sku[0][2] <= base_z + max_height:
                placed.append(carton(rng, sku, *xy, z, yaw))
                break
    return placed


def corners(boxes):
    return np.array([b.center + sign * np.array([*footprint(b.size, b.yaw), b.size[2] / 2])
                     for b in boxes for sign in (-1, 1)])


def view_around(boxes, azimuth, elevation):
    """Frame the layout's cartons (everything, when it has none); clutter and walls keep clear of it all."""
    framed = corners([b for b in boxes if b.material == "carton"] or boxes)
    low, high = framed.min(0), framed.max(0)
    target = (low + high) / 2
    extent = np.linalg.norm(np.abs(corners(boxes)[:, :2] - target[:2]).max(0))
    return View(target, float(np.linalg.norm(high - low) / 2), float(extent), azimuth, elevation)


def pallet_layout(rng):
    boxes = pallet(rng)
    sku = carton_sku(rng)
    z = PALLET[2]
    layers = rng.integers(1, 5)
    for layer in range(layers):
        if rng.random() < 0.3:
            sku = carton_sku(rng)
        cartons = carton_layer(rng, sku, z)
        if layer == layers - 1:  # a top layer half picked, as when depalletising
            keep = rng.random(len(cartons)) < rng.uniform(0.3, 1.0)
            cartons = [b for b, k in zip(cartons, keep, strict=True) if k]
        boxes += cartons
        z += sku[0][2]
    return boxes, view_around(boxes, (0, 2 * math.pi), (25, 85))


def loose_layout(rng):
    skus = [carton_sku(rng) for _ in range(rng.integers(1, 5))]
    area = rng.uniform([0.8, 0.8], [2.0, 1.6])
    boxes = pile(rng, rng.integers(3, 25), area, 0.0, rng.uniform(0.5, 1.5), skus)
    return boxes, view_around(boxes, (0, 2 * math.pi), (20, 85))


def trunk_layout(rng):
    """An open car boot: carpeted floor and walls, a bumper lip in front, cartons piled inside."""
    width, depth, floor_z, height = rng.uniform([1.0, 0.75, 0.55, 0.45], [1.3, 1.05, 0.7, 0.6])
    paint = rng.uniform(0.1, 0.8, 3)
    carpet = np.full(3, rng.uniform(0.1, 0.25))
    car = [
        ((0, 0, (0.28 + floor_z) / 2), (width + 0.3, depth + 0.3, floor_z - 0.32), paint),
        ((0, 0, floor_z - 0.01), (width, depth, 0.02), carpet),
        ((-width / 2 - 0.04, 0, floor_z + height / 2), (0.08, depth, height), carpet),
        ((width / 2 + 0.04, 0, floor_z + height / 2), (0.08, depth, height), carpet),
        ((0, depth / 2 + 0.05, floor_z + height / 2 + 0.05), (width + 0.16, 0.1, height + 0.1), carpet),
        ((0, -depth / 2 - 0.08, floor_z - 0.1), (width + 0.3, 0.16, 0.3), paint),
    ]
    boxes = [Box(np.array(c), np.array(s), 0.0, "paint", jitter(rng, col, 0.01)) for c, s, col in car]
    skus = [carton_sku(rng) for _ in range(rng.integers(1, 4))]
    boxes += pile(rng, rng.integers(2, 12), (width - 0.02, depth - 0.02), floor_z, height, skus)
    return boxes, view_around(boxes, (-math.pi / 2 - 0.5, -math.pi / 2 + 0.5), (15, 55))


def shelf_row(rng, skus, width, depth, base_z, clearance):
    """Cartons side by side along a shelf, some two deep or two high."""
    boxes = []
    x = -width / 2 + rng.uniform(0, 0.1)
    while True:
        size, color = skus[rng.integers(len(skus))]
        size = size.copy()
        size[2] = min(size[2], clearance * rng.uniform(0.6, 0.95))
        yaw = rng.choice([0, math.pi / 2])
        half = footprint(size, yaw)
        if x + 2 * half[0] > width / 2 or 2 * half[1] > depth:
            break
        if rng.random() < 0.85:  # leave the odd gap
            front = -depth / 2 + half[1] + rng.uniform(0, 0.03)
            rows = [front, front + 2 * half[1] + 0.01] if 4 * half[1] < depth else [front]
            for y in rows:
                boxes.append(carton(rng, (size, color), x + half[0], y, base_z, yaw + rng.normal(0, 0.02)))
                if 2 * size[2] < clearance and rng.random() < 0.4:
                    boxes.append(carton(rng, (size, color), x + half[0], y, base_z + size[2], yaw))
        x += 2 * half[0] + rng.uniform(0.005, 0.06)
    return boxes


def shelf_layout(rng):
    """A rack: uprights, shelf boards, rows of cartons on each board."""
    width, depth, spacing, first = rng.uniform([1.4, 0.45, 0.45, 0.05], [2.6, 0.7, 0.7, 0.2])
    levels = rng.integers(2, 5)
    steel = jitter(rng, [(0.9, 0.45, 0.1), (0.15, 0.3, 0.7), (0.6, 0.6, 0.62)][rng.integers(3)])
    top = first + levels * spacing
    boxes = [Box(np.array([x, y, top / 2]), np.array([0.07, 0.07, top]), 0.0, "metal", steel)
             for x in (-width / 2 - 0.04, width / 2 + 0.04) for y in (-depth / 2, depth / 2)]
    skus = [carton_sku(rng) for _ in range(rng.integers(1, 4))]
    for level in range(levels):
        z = first + level * spacing
        boxes.append(Box(np.array([0, 0, z - 0.015]), np.array([width + 0.1, depth, 0.03]), 0.0, "metal", steel))
        boxes += shelf_row(rng, skus, width, depth, z, spacing - 0.05)
    return boxes, view_around(boxes, (-math.pi / 2 - 0.6, -math.pi / 2 + 0.6), (-5, 35))


LAYOUTS = {"pallet": pallet_layout, "loose": loose_layout, "trunk": trunk_layout, "shelf": shelf_layout}
LAYOUT_ODDS = {"pallet": 0.4, "loose": 0.3, "trunk": 0.12, "shelf": 0.18}


# ----------------------------------------------------------------------------------------------------
# Camera


@dataclass
class Camera:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    rotation: np.ndarray  # world -> camera
    position: np.ndarray  # camera centre in the world

    def to_camera(self, points):
        return (np.asarray(points) - self.position) @ self.rotation.T

    def intrinsics(self):
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}

    def rays(self):
        """Per pixel, the camera-frame point at depth 1: (H, W, 3)."""
        u, v = np.meshgrid(np.arange(self.width), np.arange(self.height))
        return np.dstack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones(u.shape)])


def look_at(position, target, roll):
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, UP)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    return np.stack([c * right + s * down, c * down - s * right, forward])


def sample_camera(rng, view, width, height):
    """A pinhole camera at a random spot around the view, framing it from close-up to whole."""
    fx = width / 2 / math.tan(math.radians(rng.uniform(55, 75)) / 2)
    half_fov = math.atan(min(width, height) / 2 / fx)
    distance = view.radius / math.sin(half_fov) * rng.uniform(0.5, 1.1)
    azimuth = rng.uniform(*view.azimuth)
    elevation = math.radians(rng.uniform(*view.elevation))
    direction = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                          math.sin(elevation)])
    position = view.target + distance * direction
    position[2] = max(position[2], 0.2)
    target = view.target + rng.normal(0, 0.15 * view.radius, 3)
    cx, cy = (np.array([width, height]) - 1) / 2 + rng.normal(0, 0.01, 2) * width
    return Camera(fx, fx, float(cx), float(cy), width, height, look_at(position, target, rng.normal(0, 0.05)),
                  position)


def clutter(rng, view, camera):
    """Crates, bins and spare pallets around the layout, kept low on the camera's side."""
    boxes = []
    to_camera = camera.position[:2] - view.target[:2]
    for _ in range(rng.integers(0, 8)):
        size = rng.uniform([0.2, 0.2, 0.1], [1.2, 1.0, 1.4])
        angle = rng.uniform(0, 2 * math.pi)
        xy = view.target[:2] + (view.extent + rng.uniform(0.3, 3.0)) * np.array([math.cos(angle), math.sin(angle)])
        if np.linalg.norm(camera.position[:2] - xy) < size[:2].max() + 0.5:
            continue
        if (xy - view.target[:2]) @ to_camera > 0:
            size[2] = min(size[2], 0.3)
        material = rng.choice(["plastic", "metal", "wood"])
        yaw = rng.uniform(0, math.pi)
        if material == "wood":
            boxes += pallet(rng, *xy, yaw)
            continue
        color = MATERIALS[material]["color"](rng)
        boxes.append(Box(np.array([*xy, size[2] / 2]), size, yaw, material, color))
    return boxes


# ----------------------------------------------------------------------------------------------------
# Surfaces: every face is a rectangle (or an infinite plane) with its own frame, texture and decals


@dataclass
class Face:
    origin: np.ndarray  # a corner; the face spans origin + s * e1 + t * e2 for s, t within extent
    e1: np.ndarray
    e2: np.ndarray
    normal: np.ndarray  # outward
    extent: tuple  # (a, b) metres along e1, e2; inf for floor and walls
    color: np.ndarray
    texture: tuple  # noise texels per metre along e1 and e2, and noise amplitude
    label: int = 0  # carton label (1-based); 0 for anything else
    top: bool = False  # a carton's top face
    decals: list = field(default_factory=list)  # (s0, s1, t0, t1, rgb, alpha, printed)


MAX_DECALS = 3  # per face
MATERIALS = {
    "carton": {"texture": (500.0, 500.0, 0.07)},
    "wood": {"texture": (60.0, 1500.0, 0.25)},  # stretched noise reads as grain
    "plastic": {"texture": (300.0, 300.0, 0.03),
                "color": lambda rng: jitter(rng, [(0.1, 0.3, 0.7), (0.75, 0.12, 0.1), (0.15, 0.5, 0.2),
                                                   (0.9, 0.75, 0.1), (0.35, 0.35, 0.38)][rng.integers(5)])},
    "metal": {"texture": (200.0, 200.0, 0.05), "color": lambda rng: np.full(3, rng.uniform(0.3, 0.75))},
    "paint": {"texture": (300.0, 300.0, 0.03)},
}


def box_sides(box):
    """The six faces as (kind, origin, e1, e2, extent, normal); side faces have e2 pointing down."""
    x, y, _ = rot_z(box.yaw).T
    length, width, height = box.size
    corner = box.center - x * length / 2 - y * width / 2
    return [
        ("top", corner + UP * height / 2, x, y, (length, width), UP),
        ("bottom", corner - UP * height / 2, x, y, (length, width), -UP),
        ("end", corner + x * length + UP * height / 2, y, -UP, (width, height), x),
        ("end", corner + UP * height / 2, y, -UP, (width, height), -x),
        ("side", corner + y * width + UP * height / 2, x, -UP, (length, height), y),
        ("side", corner + UP * height / 2, x, -UP, (length, height), -y),
    ]


def random_rect(rng, extent, low, high):
    """A rectangle of random size in [low, high] metres somewhere inside a face."""
    size = np.minimum(rng.uniform(low, high, 2), np.array(extent) * 0.8)
    s0, t0 = rng.uniform(0, np.array(extent) - size)
    return s0, s0 + size[0], t0, t0 + size[1]


def carton_faces(rng, box, label):
    """Faces of one carton: packing tape over the flaps, shipping labels and print on some faces."""
    tape = rng.random() < 0.8
    tape_width = rng.uniform(0.045, 0.075)
    tape_color, tape_alpha = [((0.78, 0.62, 0.42), 0.5), ((0.55, 0.38, 0.2), 0.85),
                              ((0.9, 0.9, 0.88), 0.9)][rng.integers(3)]
    flap = rng.uniform(0.04, 0.09)
    ink = rng.uniform(0.05, 0.6, 3) if rng.random() < 0.35 else None
    faces = []
    for kind, origin, e1, e2, extent, normal in box_sides(box):
        a, b = extent
        decals = []
        if kind == "top":  # the flaps meet along the middle, taped over or showing a dark seam
            half = tape_width / 2 if tape else 0.002
            color, alpha = (tape_color, tape_alpha) if tape else ((0.2, 0.15, 0.1), 0.6)
            decals.append((0, a, b / 2 - half, b / 2 + half, color, alpha, False))
        if kind == "end" and tape:
            decals.append((a / 2 - tape_width / 2, a / 2 + tape_width / 2, 0, flap, tape_color, tape_alpha, False))
        if kind != "bottom" and rng.random() < (0.15 if kind == "top" else 0.3):
            decals.append((*random_rect(rng, extent, 0.07, 0.16), (0.95, 0.95, 0.93), 1.0, True))
        if kind in ("side", "end") and ink is not None:
            decals.append((*random_rect(rng, extent, 0.05, 0.3), ink, 0.9, False))
        faces.append(Face(origin, e1, e2, normal, extent, box.color, MATERIALS["carton"]["texture"], label,
                          kind == "top", decals))
    return faces


def structure_faces(box):
    faces = []
    for kind, origin, e1, e2, extent, normal in box_sides(box):
        decals = []
        if box.material == "plastic" and kind == "side":  # a crate's handle hole
            a, b = extent
            decals.append((a / 2 - 0.06, a / 2 + 0.06, b * 0.1, b * 0.1 + 0.03, (0.05, 0.05, 0.05), 1.0, False))
        faces.append(Face(origin, e1, e2, normal, extent, box.color, MATERIALS[box.material]["texture"],
                          decals=decals))
    return faces


def background_planes(rng, view, camera):
    """Floor with markings, a back wall with posters and sometimes a side wall; all infinite planes."""
    floor_color = jitter(rng, [(0.55, 0.55, 0.53), (0.45, 0.5, 0.45), (0.6, 0.5, 0.4)][rng.integers(3)])
    markings = [(-50, 50, t, t + rng.uniform(0.05, 0.12), jitter(rng, c), 0.9, False)
                for t, c in zip(rng.uniform(-4, 4, rng.integers(0, 3)),
                                [(0.9, 0.75, 0.1), (0.9, 0.9, 0.9)], strict=False)]
    axes = rot_z(rng.uniform(0, math.pi))
    planes = [Face(np.zeros(3), axes[:, 0], axes[:, 1], UP, (math.inf, math.inf), floor_color,
                   (60.0, 60.0, 0.2), decals=markings)]
    toward = camera.position[:2] - view.target[:2]
    normal = np.array([*toward / np.linalg.norm(toward), 0.0])
    along = np.cross(UP, normal)
    walls = [(normal, view.extent + rng.uniform(0.5, 3.0))] if rng.random() < 0.8 else []
    if walls and rng.random() < 0.4:
        walls.append((along * rng.choice([-1, 1]), view.extent + rng.uniform(0.5, 2.0)))
    for inward, distance in walls:
        origin = np.array([*view.target[:2], 0.0]) - inward * distance
        paint = jitter(rng, [(0.85, 0.85, 0.82), (0.7, 0.72, 0.75), (0.8, 0.75, 0.62)][rng.integers(3)])
        posters = []  # somewhere on the 6 m of wall behind the target
        for _ in range(rng.integers(0, 3)):
            s0, s1, t0, t1 = random_rect(rng, (6, 3), 0.4, 1.5)
            posters.append((s0 - 3, s1 - 3, t0, t1, rng.uniform(0.1, 0.9, 3), 1.0, False))
        if rng.random() < 0.4:  # warehouses paint the lower part of their walls
            posters.append((-50, 50, 0, rng.uniform(0.8, 1.5), jitter(rng, (0.3, 0.4, 0.5)), 1.0, False))
        planes.append(Face(origin, np.cross(inward, UP), UP, inward, (math.inf, math.inf), paint,
                           (40.0, 40.0, 0.1), decals=posters))
    return planes


# ----------------------------------------------------------------------------------------------------
# Rendering


def face_table(faces, camera, light):
    """Stack the faces into arrays indexed by face id, geometry in the camera frame.

    The last row stands for 'no surface' (pixels that see past every plane).
    """
    sky = Face(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), (math.inf, math.inf), np.full(3, 0.8),
               (1.0, 1.0, 0.0))
    faces = [*faces, sky]
    decals = np.zeros((len(faces), MAX_DECALS, 9))  # s0 s1 t0 t1 r g b alpha printed; zero size = none
    for f, face in enumerate(faces):
        for d, (s0, s1, t0, t1, color, alpha, printed) in enumerate(face.decals):
            decals[f, d] = [s0, s1, t0, t1, *color, alpha, printed]
    normals = np.array([f.normal for f in faces])
    direct, ambient = light
    return {
        "origin": camera.to_camera(np.array([f.origin for f in faces])),
        "e1": np.array([f.e1 for f in faces]) @ camera.rotation.T,
        "e2": np.array([f.e2 for f in faces]) @ camera.rotation.T,
        "normal": normals @ camera.rotation.T,
        "extent": np.array([f.extent for f in faces]),
        "color": np.array([f.color for f in faces]),
        "texture": np.array([f.texture for f in faces]),
        "offset": np.arange(len(faces))[:, None] * [97, 61],  # each face samples its own patch of noise
        "label": np.array([f.label for f in faces]),
        "top": np.array([f.top for f in faces]),
        "decals": decals,
        "shade": ambient + np.clip(normals @ direct, 0, None),
    }


def clip_near(polygon):
    """Sutherland-Hodgman clip of a camera-frame polygon to the half-space z >= NEAR."""
    kept = []
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        if a[2] >= NEAR:
            kept.append(a)
        if (a[2] >= NEAR) != (b[2] >= NEAR):
            kept.append(a + (b - a) * (NEAR - a[2]) / (b[2] - a[2]))
    return np.array(kept)


def plane_depth(rays, origin, normal):
    """Depth along the optical axis where each ray meets a plane; inf where it misses or hits the back."""
    facing = rays @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = (origin @ normal) / facing
    return np.where((facing < 0) & (depth > 0), depth, np.inf)


def face_pixels(table, f, camera, rays):
    """Pixels whose centre ray meets face f: an image window, a mask within it and the depth there."""
    origin, normal, (a, b) = table["origin"][f], table["normal"][f], table["extent"][f]
    if math.isinf(a):  # floor and walls: every ray may meet them
        depth = plane_depth(rays, origin, normal)
        return (slice(None), slice(None)), np.isfinite(depth), depth
    corners = origin + np.array([[0, 0], [a, 0], [a, b], [0, b]]) @ np.stack([table["e1"][f], table["e2"][f]])
    polygon = clip_near(corners)
    if len(polygon) < 3:
        return None
    uv = polygon[:, :2] / polygon[:, 2:] * [camera.fx, camera.fy] + [camera.cx, camera.cy]
    low = np.clip(np.floor(uv.min(0)).astype(int) - 1, 0, [camera.width, camera.height])
    high = np.clip(np.ceil(uv.max(0)).astype(int) + 2, 0, [camera.width, camera.height])
    if (high <= low).any():
        return None
    window = (slice(low[1], high[1]), slice(low[0], high[0]))
    covered = np.zeros(high[::-1] - low[::-1], np.uint8)
    cv2.fillConvexPoly(covered, np.round((uv - low) * 16).astype(np.int32), 1, cv2.LINE_8, shift=4)
    depth = plane_depth(rays[window], origin, normal)
    # fillConvexPoly also draws the polygon's outline; keep only pixels whose centre ray meets the face
    # itself, so neighbouring faces split their shared edge exactly instead of fighting over it.
    covered = covered.view(bool) & np.isfinite(depth)
    offset = rays[window] * np.where(covered, depth, 0)[..., None] - origin
    s, t = offset @ table["e1"][f], offset @ table["e2"][f]
    inside = covered & (s >= -EDGE) & (s <= a + EDGE) & (t >= -EDGE) & (t <= b + EDGE)
    return window, inside, depth


def rasterise(table, camera, rays):
    """Z-buffer every face; returns per pixel the id of the face seen and its depth (inf: none)."""
    sky = len(table["label"]) - 1
    depth = np.full(rays.shape[:2], np.inf)
    face_id = np.full(rays.shape[:2], sky)
    for f in range(sky):
        if table["origin"][f] @ table["normal"][f] >= 0:  # facing away from the camera
            continue
        pixels = face_pixels(table, f, camera, rays)
        if pixels is None:
            continue
        window, inside, z = pixels
        nearer = inside & (z < depth[window])
        depth[window][nearer] = z[nearer]
        face_id[window][nearer] = f
    return face_id, depth


def noise_texture(rng, beta=1.8):
    """Tileable 1/f^beta noise, roughly within [-1, 1]: blotches and fibres for every surface."""
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(NOISE_SIZE), np.fft.rfftfreq(NOISE_SIZE), indexing="ij"))
    white = rng.normal(size=freq.shape) + 1j * rng.normal(size=freq.shape)
    spectrum = white / np.maximum(freq, 1 / NOISE_SIZE) ** beta
    tile = np.fft.irfft2(spectrum, s=(NOISE_SIZE, NOISE_SIZE))
    return np.clip(tile / (2.5 * tile.std()), -1, 1)


def sample(noise, rows, cols):
    wrap = NOISE_SIZE - 1
    return noise[rows.astype(np.int64) & wrap, cols.astype(np.int64) & wrap]


def paint(table, face_id, depth, rays, noise):
    """Colour each pixel from the face it sees: textured base, decals, creases, then lighting."""
    table = {name: column.astype(np.float32) for name, column in table.items()}  # plenty for colours
    fid = face_id.ravel()
    points = (rays * np.where(np.isfinite(depth), depth, 0)[..., None]).reshape(-1, 3).astype(np.float32)
    offset = points - table["origin"][fid]
    s = np.einsum("pc,pc->p", offset, table["e1"][fid])
    t = np.einsum("pc,pc->p", offset, table["e2"][fid])
    texture, shift = table["texture"][fid], table["offset"][fid]
    grain = sample(noise, t * texture[:, 1] + shift[:, 1], s * texture[:, 0] + shift[:, 0])
    rgb = table["color"][fid] * (1 + texture[:, 2] * grain)[:, None]
    for k in range(MAX_DECALS):
        decal = table["decals"][:, k]
        hit = np.flatnonzero(decal[fid, 1] > decal[fid, 0])
        d, ds, dt = decal[fid[hit]], s[hit], t[hit]
        inside = (ds >= d[:, 0]) & (ds < d[:, 1]) & (dt >= d[:, 2]) & (dt < d[:, 3])
        hit, d, ds, dt = hit[inside], d[inside], ds[inside], dt[inside]
        color = d[:, 4:7]
        # Shipping labels carry lines of "text": 12 mm rows, words cut from the noise texture.
        row = (dt - d[:, 2]) / 0.012
        margin = np.minimum.reduce([ds - d[:, 0], d[:, 1] - ds, d[:, 3] - dt])
        ink = (d[:, 8] > 0) & (row % 1 < 0.45) & (row >= 1) & (margin > 0.01)
        ink &= sample(noise, row * 41, ds * 150) > -0.1
        color[ink] = 0.15
        rgb[hit] = rgb[hit] * (1 - d[:, 7:8]) + color * d[:, 7:8]
    # Carton edges show as darker creases, which is what separates touching cartons in real photos.
    extent = table["extent"][fid]
    rim = np.minimum.reduce([s, extent[:, 0] - s, t, extent[:, 1] - t])
    rgb[(table["label"][fid] > 0) & (rim < 0.004)] *= 0.75
    rgb *= table["shade"][fid][:, None]
    return rgb.reshape(*face_id.shape, 3)


def finish(rng, rgb):
    """Uneven light, a little blur and sensor noise; float RGB in [0, 1] to uint8."""
    height, width = rgb.shape[:2]
    light = cv2.resize(rng.uniform(0.75, 1.15, (3, 4)), (width, height), interpolation=cv2.INTER_CUBIC)
    rgb = (rgb * light[..., None] * rng.uniform(0.92, 1.08, 3) * 255).astype(np.float32)
    rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.3, 0.9))
    rgb += rng.standard_normal(rgb.shape, np.float32) * rng.uniform(1, 4)
    return np.clip(rgb, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Scenes


@dataclass
class Carton3D:
    """A carton's ground truth in the camera frame (metres)."""

    top_center: np.ndarray  # centre of its top face
    top_normal: np.ndarray  # unit normal of the top face, pointing up
    rotation: np.ndarray  # camera-from-carton; columns: length, width and height axes
    size: np.ndarray  # length, width, height

    def to_json(self):
        return {name: np.round(getattr(self, name), 6).tolist()
                for name in ("top_center", "top_normal", "rotation", "size")}


def carton_in_camera(box, camera):
    rotation = camera.rotation @ rot_z(box.yaw)
    return Carton3D(camera.to_camera(box.center + UP * box.size[2] / 2), rotation[:, 2], rotation, box.size)


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) int; k > 0 where the pixel shows cartons[k - 1]
    top_face: np.ndarray  # (H, W) bool; the pixel shows some carton's top face
    depth: np.ndarray  # (H, W) uint16 millimetres along the optical axis, 0 = no surface
    camera: Camera
    cartons: list  # Carton3D of every carton in the scene, seen or hidden
    kind: str

    def visible_labels(self, min_pixels=MIN_VISIBLE_PIXELS):
        """Labels of the cartons that are annotated: those showing at least min_pixels pixels."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.cartons) + 1)
        return [int(k) for k in np.flatnonzero(counts >= min_pixels) if k > 0]

    def instance_masks(self, min_pixels=MIN_VISIBLE_PIXELS):
        """(N, H, W) bool masks of the annotated cartons, in annotation order."""
        labels = self.visible_labels(min_pixels)
        return self.labels[None] == np.array(labels, int).reshape(-1, 1, 1)


def render_scene(rng=None, width=640, height=480, kind=None):
    """Render one random scene.

    rng: a seed or np.random.Generator. kind: "pallet", "loose", "trunk", "shelf", "empty" (one of those
    layouts without its cartons) or None for a random layout.
    """
    rng = np.random.default_rng(rng)
    kind = kind or str(rng.choice(list(LAYOUT_ODDS), p=list(LAYOUT_ODDS.values())))
    boxes, view = LAYOUTS[str(rng.choice(list(LAYOUTS))) if kind == "empty" else kind](rng)
    if kind == "empty":
        boxes = [b for b in boxes if b.material != "carton"]
    camera = sample_camera(rng, view, width, height)
    boxes += clutter(rng, view, camera)
    cartons = [b for b in boxes if b.material == "carton"]
    faces = background_planes(rng, view, camera)
    for label, box in enumerate(cartons, 1):
        faces += carton_faces(rng, box, label)
    for box in boxes:
        if box.material != "carton":
            faces += structure_faces(box)
    elevation, azimuth = math.radians(rng.uniform(30, 85)), rng.uniform(0, 2 * math.pi)
    sun = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                    math.sin(elevation)])
    table = face_table(faces, camera, (sun * rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.6)))
    rays = camera.rays()
    face_id, depth = rasterise(table, camera, rays)
    image = finish(rng, paint(table, face_id, depth, rays, noise_texture(rng)))
    millimetres = np.where(depth < 65.5, np.round(depth * 1000), 0).astype(np.uint16)
    return Scene(image, table["label"][face_id], table["top"][face_id], millimetres, camera,
                 [carton_in_camera(b, camera) for b in cartons], kind)


# ----------------------------------------------------------------------------------------------------
# COCO annotations


def bridge_holes(outline, holes):
    """Join each hole to the outline by a zero-width slit, so one polygon describes a mask with holes."""
    for hole in holes:
        gap = ((outline[:, None] - hole[None]) ** 2).sum(-1)
        i, j = np.unravel_index(gap.argmin(), gap.shape)
        outline = np.concatenate([outline[: i + 1], np.roll(hole, -j, axis=0), hole[j : j + 1], outline[i:]])
    return outline


def mask_to_polygons(mask, offset=(0, 0)):
    """COCO polygons that pycocotools rasterises back to exactly this mask.

    Contours are traced on the mask upsampled 2x, so they run a quarter pixel inside the mask's outer
    pixel edges: in COCO's convention (pixel u covers [u, u + 1]) that keeps every mask pixel's centre
    inside the polygon and every other pixel's centre outside, even for one-pixel specks and lines.
    """
    big = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    # Half a (2x) pixel of simplification cannot move a polygon edge across a pixel centre.
    contours = [cv2.approxPolyDP(c, 0.5, True)[:, 0].astype(float) for c in contours]
    polygons = []
    for k, (_, _, first_hole, parent) in enumerate(hierarchy[0] if contours else []):
        if parent >= 0:
            continue
        holes = []
        while first_hole >= 0:
            holes.append(contours[first_hole])
            first_hole = hierarchy[0][first_hole][0]
        polygon = (bridge_holes(contours[k], holes) + 0.5) / 2 + offset
        polygons.append(polygon.ravel().tolist())
    return polygons


def annotate(scene, image_id, first_id):
    """COCO annotations of the scene's visible cartons, with their 3D truth under "carton_3d"."""
    annotations = []
    for n, label in enumerate(scene.visible_labels()):
        mask = scene.labels == label
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        annotations.append({
            "id": first_id + n,
            "image_id": image_id,
            "category_id": CATEGORY["id"],
            "segmentation": mask_to_polygons(mask[y0:y1, x0:x1], (x0, y0)),
            "area": int(mask.sum()),
            "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
            "iscrowd": 0,
            "carton_3d": scene.cartons[label - 1].to_json(),
        })
    return annotations


# ----------------------------------------------------------------------------------------------------
# Dataset


def dataset_scene(seed, split, index, width=640, height=480):
    """The scene behind image `index` of a split generated with `seed` (each has its own random stream)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    return render_scene(rng, width, height, "empty" if index % EMPTY_EVERY == 3 else None)


def encode_jpeg(rgb, quality=JPEG_QUALITY):
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def write_split(out, split, count, seed, width, height):
    images_dir, annotations_path = split_paths(out, split)
    depth_dir = images_dir.with_name(f"{images_dir.name}_depth")
    for folder in (images_dir, depth_dir, annotations_path.parent):
        folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        scene = dataset_scene(seed, split, index, width, height)
        stem, image_id = f"{index:06d}", index + 1
        (images_dir / f"{stem}.jpg").write_bytes(encode_jpeg(scene.image))
        (depth_dir / f"{stem}.png").write_bytes(cv2.imencode(".png", scene.depth)[1].tobytes())
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": width, "height": height,
                       "depth_file": f"{depth_dir.name}/{stem}.png", "camera": scene.camera.intrinsics(),
                       "scene": scene.kind})
        annotations += annotate(scene, image_id, len(annotations) + 1)
    coco = {"info": {"description": "synthetic stacked cartons, SCD/OSCD layout", "version": "1.0"},
            "licenses": [], "categories": [CATEGORY], "images": images, "annotations": annotations}
    annotations_path.write_text(json.dumps(coco, sort_keys=True, separators=(",", ":")))


def generate_dataset(out, train, val, seed, width=640, height=480):
    """Write `train` and `val` images in SCD's OSCD layout under out; returns the oneclass_carton root."""
    write_split(out, "train", train, seed, width, height)
    write_split(out, "val", val, seed, width, height)
    return dataset_root(out)


def overlay(scene):
    """The image with each annotated carton tinted and outlined, for looking at."""
    out = scene.image.copy()
    palette = np.random.default_rng(0).uniform(40, 255, (len(scene.cartons) + 1, 3))
    for label in scene.visible_labels():
        mask = scene.labels == label
        out[mask] = out[mask] // 2 + (palette[label] / 2).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


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
