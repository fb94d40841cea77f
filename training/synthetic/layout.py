"""Scene layout: cartons, pallets, shelves and clutter as boxes in a world frame (z up, metres), and the
camera that looks at them. No pixels here: rendering turns a layout into images."""

import math
from dataclasses import dataclass

import numpy as np

from synthetic.style import LOOKS, PLAIN, chance

UP = np.array([0.0, 0.0, 1.0])
PALLET = np.array([1.2, 0.8, 0.144])  # EUR pallet


MATERIALS = {
    "carton": {"texture": (500.0, 500.0, 0.07)},
    "wood": {"texture": (60.0, 1500.0, 0.25)},  # stretched noise reads as grain
    "plastic": {"texture": (300.0, 300.0, 0.03),
                "color": lambda rng: jitter(rng, [(0.1, 0.3, 0.7), (0.75, 0.12, 0.1), (0.15, 0.5, 0.2),
                                                   (0.9, 0.75, 0.1), (0.35, 0.35, 0.38)][rng.integers(5)])},
    "metal": {"texture": (200.0, 200.0, 0.05), "color": lambda rng: np.full(3, rng.uniform(0.3, 0.75))},
    "paint": {"texture": (300.0, 300.0, 0.03)},
    # negatives and interiors
    "cabinet": {"texture": (300.0, 300.0, 0.02)},
    "upholstery": {"texture": (900.0, 900.0, 0.12)},
    # distractors of the shifted look only
    "drum": {"texture": (300.0, 300.0, 0.04),
             "color": lambda rng: jitter(rng, [(0.1, 0.2, 0.6), (0.1, 0.45, 0.2), (0.6, 0.1, 0.1)][rng.integers(3)])},
    "sack": {"texture": (150.0, 150.0, 0.3), "color": lambda rng: jitter(rng, (0.8, 0.75, 0.6))},
    "wrapped": {"texture": (80.0, 80.0, 0.35), "color": lambda rng: np.full(3, rng.uniform(0.75, 0.95))},
}


@dataclass(eq=False)  # compared by identity: the cartons of one type share it, and so share a print
class Sku:
    size: np.ndarray  # length >= width, height
    color: np.ndarray  # cardboard RGB


@dataclass
class Box:
    center: np.ndarray  # (3,)
    size: np.ndarray  # length along the box's x, width along y, height along z
    yaw: float  # rotation about the vertical axis
    material: str  # "carton" or one of the clutter/structure materials in MATERIALS
    color: np.ndarray  # RGB in [0, 1]
    sku: Sku = None  # a carton's type
    distractor: bool = False  # a look-alike added by the negatives or interiors switch
    pattern: tuple = (0, 0.0, 0.0)  # weave kind (render.PATTERNS), period in metres, contrast

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


def carton_sku(rng, look="train", scale=1.0):
    """A carton type: size (length >= width), times scale, and a cardboard colour of the look's palette."""
    length = rng.uniform(0.22, 0.6)
    size = np.array([length, rng.uniform(0.18, min(length, 0.45)), rng.uniform(0.12, 0.4)])
    palette = LOOKS[look]["cardboard"]
    kind = rng.choice(list(palette), p=[odds for odds, _ in palette.values()])
    color = palette[kind][1]
    if color is None:
        color = rng.uniform(0.5, 0.9, 3)
    return Sku(size * scale, jitter(rng, color))


def carton(rng, sku, x, y, base_z, yaw, size=None, identical=False):
    """One carton of a type; its colour varies a little from box to box unless they are identical."""
    size = sku.size if size is None else size
    color = sku.color if identical else jitter(rng, sku.color, 0.015)
    return Box(np.array([x, y, base_z + size[2] / 2]), size.copy(), yaw, "carton", color, sku)


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


def carton_layer(rng, sku, base_z, tight=False):
    """One layer of a pallet: a grid of same-size cartons, all turned the same way; tight: identical
    cartons square to each other with 0-3 mm between them."""
    length, width, _ = sku.size
    turn = rng.random() < 0.5
    step = np.array([width, length] if turn else [length, width]) + rng.uniform(0.0, 0.003 if tight else 0.02)
    counts = np.maximum(1, ((PALLET[:2] + 0.04) // step).astype(int))
    boxes = []
    for i in range(counts[0]):
        for j in range(counts[1]):
            x, y = (np.array([i, j]) - (counts - 1) / 2) * step
            yaw = math.pi / 2 if turn else 0.0
            if not tight:
                x, y = (x, y) + rng.normal(0, 0.005, 2)
                yaw += rng.normal(0, 0.015)
            boxes.append(carton(rng, sku, x, y, base_z, yaw, identical=tight))
    return boxes


def pile(rng, count, area, base_z, max_height, skus):
    """Drop cartons at random spots in an area; one landing on others rests on the highest below it."""
    placed = []
    for _ in range(count):
        for _attempt in range(20):
            sku = skus[rng.integers(len(skus))]
            yaw = rng.uniform(0, math.pi) if rng.random() < 0.4 else rng.choice([0, math.pi / 2])
            yaw += rng.normal(0, 0.03)
            half = footprint(sku.size, yaw)
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
            if z + sku.size[2] <= base_z + max_height:
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


def alongside(rng, boxes, size, gap):
    """Where a footprint of `size` stands on the floor next to everything in boxes, on a random side:
    its centre (x, y), `gap` metres clear of them."""
    points = corners(boxes)[:, :2]
    low, high = points.min(0), points.max(0)
    side = rng.integers(4)
    axis, outward = side // 2, 1 if side % 2 else -1
    xy = (low + high) / 2 + rng.uniform(-0.3, 0.3, 2) * (high - low)
    xy[axis] = (high if outward > 0 else low)[axis] + outward * (size[axis] / 2 + gap)
    return xy


def big_cartons_beside(rng, look, boxes):
    """A pile of large cartons on the floor beside the layout: boxes of another size standing by a pallet,
    each at least 3 times the footprint of the largest carton there."""
    sku = carton_sku(rng, look)
    largest = max(b.size[0] * b.size[1] for b in boxes if b.material == "carton")
    sku.size = sku.size * max(rng.uniform(1.3, 1.8), math.sqrt(3.2 * largest / (sku.size[0] * sku.size[1])))
    area = np.full(2, sku.size[0] * 1.5) * rng.uniform(1.0, 1.8, 2)  # room for any turn of one, or more
    placed = pile(rng, rng.integers(2, 6), area, 0.0, sku.size[2] * rng.uniform(1.0, 2.5), [sku])
    xy = alongside(rng, boxes, area, rng.uniform(0.05, 0.3))
    for box in placed:
        box.center = box.center + [*xy, 0.0]
    return placed


def pallet_layout(rng, style):
    """Layers of cartons on a pallet; sizes: small cartons on it, big ones beside it; tight: identical
    cartons packed with no room between them."""
    boxes = pallet(rng)
    several_sizes, tight = chance(rng, style.sizes), chance(rng, style.tight)
    scale = rng.uniform(0.45, 0.7) if several_sizes else 1.0
    sku = carton_sku(rng, style.look, scale)
    z = PALLET[2]
    layers = rng.integers(1, 5)
    for layer in range(layers):
        if rng.random() < 0.3:
            sku = carton_sku(rng, style.look, scale)
        cartons = carton_layer(rng, sku, z, tight)
        if layer == layers - 1:  # a top layer half picked, as when depalletising
            keep = rng.random(len(cartons)) < rng.uniform(0.3, 1.0)
            cartons = [b for b, k in zip(cartons, keep, strict=True) if k]
        boxes += cartons
        z += sku.size[2]
    if several_sizes:
        boxes += big_cartons_beside(rng, style.look, boxes)
    return boxes, ((0, 2 * math.pi), (25, 85))


def loose_layout(rng, style):
    if chance(rng, style.sizes):  # from shoe boxes to furniture boxes
        skus = [carton_sku(rng, style.look, scale) for scale in (0.45, 0.8, 1.5)]
    else:
        skus = [carton_sku(rng, style.look) for _ in range(rng.integers(1, 5))]
    area = rng.uniform([0.8, 0.8], [2.0, 1.6])
    boxes = pile(rng, rng.integers(3, 25), area, 0.0, rng.uniform(0.5, 1.5), skus)
    return boxes, ((0, 2 * math.pi), (20, 85))


def upholstered(rng, look, box, kind):
    """The box recovered in upholstery: a dark fabric whose weave (render.PATTERNS) shows at close range."""
    box.material, box.distractor = "upholstery", True
    box.color = jitter(rng, LOOKS[look]["upholstery"][rng.integers(len(LOOKS[look]["upholstery"]))], 0.02)
    box.pattern = (kind, rng.uniform(0.004, 0.012) if kind != 3 else rng.uniform(0.08, 0.15), rng.uniform(0.1, 0.25))
    return box


def rear_seats(rng, look, width, depth, top_z):
    """The rear seat backs and headrests that close a car boot, seen above its back wall."""
    seats = []
    for side in (-1, 1):
        x = side * width / 4
        back = Box(np.array([x, depth / 2 + 0.18, top_z + 0.25]), np.array([width / 2 - 0.03, 0.16, 0.5]), 0.0,
                   "upholstery", np.zeros(3))
        rest = Box(np.array([x, depth / 2 + 0.2, top_z + 0.58]), np.array([0.26, 0.1, 0.16]), 0.0, "upholstery",
                   np.zeros(3))
        seats += [upholstered(rng, look, back, 3), upholstered(rng, look, rest, 1)]
    return seats


def trunk_layout(rng, style):
    """An open car boot: carpeted floor and walls, a bumper lip in front, cartons piled inside; interiors:
    woven floor and lining, and the rear seats behind."""
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
    if chance(rng, style.interiors):
        for lining in boxes[1:5]:
            upholstered(rng, style.look, lining, rng.integers(1, 3))
        boxes += rear_seats(rng, style.look, width, depth, floor_z + height + 0.1)
    skus = [carton_sku(rng, style.look) for _ in range(rng.integers(1, 4))]
    boxes += pile(rng, rng.integers(2, 12), (width - 0.02, depth - 0.02), floor_z, height, skus)
    return boxes, ((-math.pi / 2 - 0.5, -math.pi / 2 + 0.5), (15, 55))


def shelf_row(rng, skus, width, depth, base_z, clearance, tight=False):
    """Cartons side by side along a shelf, some two deep or two high; tight: identical, 0-3 mm apart."""
    boxes = []
    x = -width / 2 + rng.uniform(0, 0.1)
    while True:
        sku = skus[rng.integers(len(skus))]
        size = sku.size.copy()
        size[2] = min(size[2], clearance * rng.uniform(0.6, 0.95))
        yaw = rng.choice([0, math.pi / 2])
        half = footprint(size, yaw)
        if x + 2 * half[0] > width / 2 or 2 * half[1] > depth:
            break
        if rng.random() < 0.85:  # leave the odd gap
            front = -depth / 2 + half[1] + rng.uniform(0, 0.03)
            rows = [front, front + 2 * half[1] + 0.01] if 4 * half[1] < depth else [front]
            for y in rows:
                turn = yaw if tight else yaw + rng.normal(0, 0.02)
                boxes.append(carton(rng, sku, x + half[0], y, base_z, turn, size, tight))
                if 2 * size[2] < clearance and rng.random() < 0.4:
                    boxes.append(carton(rng, sku, x + half[0], y, base_z + size[2], yaw, size, tight))
        x += 2 * half[0] + (rng.uniform(0, 0.003) if tight else rng.uniform(0.005, 0.06))
    return boxes


def shelf_layout(rng, style):
    """A rack: uprights, shelf boards, rows of cartons on each board; interiors: a back panel and board
    liners in upholstery."""
    width, depth, spacing, first = rng.uniform([1.4, 0.45, 0.45, 0.05], [2.6, 0.7, 0.7, 0.2])
    levels = rng.integers(2, 5)
    steel = jitter(rng, [(0.9, 0.45, 0.1), (0.15, 0.3, 0.7), (0.6, 0.6, 0.62)][rng.integers(3)])
    top = first + levels * spacing
    boxes = [Box(np.array([x, y, top / 2]), np.array([0.07, 0.07, top]), 0.0, "metal", steel)
             for x in (-width / 2 - 0.04, width / 2 + 0.04) for y in (-depth / 2, depth / 2)]
    interior, tight = chance(rng, style.interiors), chance(rng, style.tight)
    if interior:
        back = Box(np.array([0, depth / 2 + 0.05, top / 2]), np.array([width + 0.1, 0.02, top]), 0.0, "upholstery",
                   np.zeros(3))
        boxes.append(upholstered(rng, style.look, back, rng.integers(1, 4)))
    skus = [carton_sku(rng, style.look) for _ in range(rng.integers(1, 4))]
    for level in range(levels):
        z = first + level * spacing
        board = Box(np.array([0, 0, z - 0.015]), np.array([width + 0.1, depth, 0.03]), 0.0, "metal", steel)
        boxes.append(upholstered(rng, style.look, board, 2) if interior else board)
        boxes += shelf_row(rng, skus, width, depth, z, spacing - 0.05, tight)
    return boxes, ((-math.pi / 2 - 0.6, -math.pi / 2 + 0.6), (-5, 35))


LAYOUTS = {"pallet": pallet_layout, "loose": loose_layout, "trunk": trunk_layout, "shelf": shelf_layout}
LAYOUT_ODDS = {"pallet": 0.4, "loose": 0.3, "trunk": 0.12, "shelf": 0.18}


def cabinet(rng, look, boxes):
    """A machine cabinet on the floor beside the layout (its doors, vents and panels are painted on)."""
    size = rng.uniform([0.6, 0.5, 1.0], [1.4, 0.9, 2.0])
    xy = alongside(rng, boxes, size, rng.uniform(0.05, 0.5))
    color = jitter(rng, LOOKS[look]["machine"][rng.integers(len(LOOKS[look]["machine"]))], 0.02)
    return Box(np.array([*xy, size[2] / 2]), size, 0.0, "cabinet", color, distractor=True)


def negatives(rng, look, boxes, beside=True):
    """Things that are not cartons: some cartons become painted-metal or plastic cases of the same shape,
    and (beside) a machine cabinet stands next to the layout."""
    machine = LOOKS[look]["machine"]
    for box in boxes:
        if box.material == "carton" and rng.random() < 0.15:
            box.material, box.distractor, box.sku = str(rng.choice(["cabinet", "plastic", "metal"])), True, None
            box.color = jitter(rng, machine[rng.integers(len(machine))], 0.03)
    return boxes + ([cabinet(rng, look, boxes)] if beside else [])



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
    if np.linalg.norm(right) < 1e-9:  # straight down: any heading will do, roll turns it
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    return np.stack([c * right + s * down, c * down - s * right, forward])


def sample_camera(rng, view, width, height, style=PLAIN):
    """A pinhole camera at a random spot around the view, framing it from close-up to whole.

    border: closer and aimed off-centre, so cartons cross the image border. poses: any elevation from 5
    degrees to straight top-down (a quarter of these exactly top-down, at any heading).
    """
    fx = width / 2 / math.tan(math.radians(rng.uniform(55, 75)) / 2)
    half_fov = math.atan(min(width, height) / 2 / fx)
    border, poses = chance(rng, style.border), chance(rng, style.poses)
    distance = view.radius / math.sin(half_fov) * (rng.uniform(0.3, 0.55) if border else rng.uniform(0.5, 1.1))
    if border:  # close, yet outside the sphere around the cartons
        distance = max(distance, 1.05 * view.radius)
    azimuth = rng.uniform(*view.azimuth)
    top_down = poses and rng.random() < 0.25
    elevation = math.radians(90.0 if top_down else rng.uniform(*((5, 90) if poses else view.elevation)))
    direction = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                          math.sin(elevation)])
    position = view.target + distance * direction
    position[2] = max(position[2], 0.2)
    target = view.target + rng.normal(0, 0.15 * view.radius, 3)
    if border:
        target[:2] += rng.uniform(-0.7, 0.7, 2) * view.radius
    if top_down:
        position[:2] = target[:2]
    cx, cy = (np.array([width, height]) - 1) / 2 + rng.normal(0, 0.01, 2) * width
    roll = rng.uniform(0, 2 * math.pi) if top_down else rng.normal(0, 0.05)
    return Camera(fx, fx, float(cx), float(cy), width, height, look_at(position, target, roll), position)


def clutter(rng, view, camera, look="train"):
    """Crates, bins and spare pallets (other things in the shifted look) around the layout, kept low on
    the camera's side."""
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
        material = rng.choice(LOOKS[look]["clutter"])
        yaw = rng.uniform(0, math.pi)
        if material == "wood":
            boxes += pallet(rng, *xy, yaw)
            continue
        color = MATERIALS[material]["color"](rng)
        boxes.append(Box(np.array([*xy, size[2] / 2]), size, yaw, material, color))
    return boxes
