"""Rendering: every face of a layout rasterised into a z-buffer with its exact plane depth, painted with
texture, decals and light, so each carton's mask is what the camera sees of it after occlusion."""

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from synthetic.layout import (
    LAYOUT_ODDS,
    LAYOUTS,
    MATERIALS,
    UP,
    Camera,
    clutter,
    jitter,
    negatives,
    rot_z,
    sample_camera,
    view_around,
)
from synthetic.style import LOOKS, PLAIN, chance

MIN_VISIBLE_PIXELS = 30  # cartons showing fewer pixels are not annotated
NEAR = 0.05  # metres; faces are clipped to this plane in front of the camera
EDGE = 1e-6  # metres of slack when testing whether a pixel's ray meets a face
NOISE_SIZE = 256  # texels per side of the tileable noise texture


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
    decals: list = field(default_factory=list)  # (s0, s1, t0, t1, rgb, alpha, kind): kind one of DECALS
    pattern: tuple = (0, 0.0, 0.0)  # weave: kind (PATTERNS), period (m), contrast
    distractor: bool = False  # a look-alike added by the negatives or interiors switch


MAX_DECALS = 6  # per face
# What a decal rectangle holds: a plain patch, a shipping label with lines of text, large characters, a
# round logo, a barcode, a hand hole, a vent grille.
DECALS = {"plain": 0, "label": 1, "text": 2, "logo": 3, "barcode": 4, "hole": 5, "vent": 6}
PATTERNS = {"none": 0, "woven": 1, "ribbed": 2, "quilted": 3}


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


def print_design(rng, look):
    """The print of a carton type, the same on every carton of it (face fractions, so sizes may differ):
    often a solid colour, large characters on the sides, sometimes a logo, a barcode, hand holes, tape."""
    palette = LOOKS[look]
    color = np.array(palette["print"][rng.integers(len(palette["print"]))]) if rng.random() < 0.7 else None
    ink = np.array(palette["ink"][rng.integers(len(palette["ink"]))])
    if color is not None and abs(ink.mean() - color.mean()) < 0.3:  # keep the characters legible
        ink = np.full(3, 0.05 if color.mean() > 0.5 else 0.95)
    return {
        "color": color,
        "ink": ink,
        "text": rng.uniform([0.08, 0.12, 0.2], [0.2, 0.35, 0.45]),  # left margin, top, height (fractions)
        "logo": rng.uniform([0.15, 0.55, 0.1], [0.85, 0.8, 0.18]) if rng.random() < 0.6 else None,  # x, y, radius
        "logo_color": np.array(palette["print"][rng.integers(len(palette["print"]))]),
        "barcode": rng.random() < 0.5,
        "handles": rng.random() < 0.4,
        "tape": (np.array(palette["print"][rng.integers(len(palette["print"]))]), 0.95) if rng.random() < 0.4 else None,
    }


def printed_decals(design, kind, a, b):
    """The design's decals on one face of extent (a, b) metres."""
    decals = []
    if kind == "side":
        left, top, height = design["text"]
        decals.append((left * a, (1 - left) * a, top * b, (top + height) * b, design["ink"], 1.0, DECALS["text"]))
        if design["barcode"]:
            decals.append((0.62 * a, 0.62 * a + min(0.14, 0.3 * a), 0.72 * b, 0.72 * b + min(0.07, 0.2 * b),
                           (0.97, 0.97, 0.95), 1.0, DECALS["barcode"]))
    if kind in ("side", "top") and design["logo"] is not None:
        x, y, radius = design["logo"] * [a, b, min(a, b)]
        decals.append((x - radius, x + radius, y - radius, y + radius, design["logo_color"], 1.0, DECALS["logo"]))
    if kind == "end" and design["handles"]:
        decals.append((0.3 * a, 0.7 * a, 0.1 * b, 0.1 * b + min(0.035, 0.15 * b), (0.04, 0.03, 0.02), 1.0,
                       DECALS["hole"]))
    return decals


def carton_faces(rng, box, label, design=None):
    """Faces of one carton: packing tape over the flaps, shipping labels and print on some faces; with a
    print design (printed switch), its colour, characters, logo, barcode and hand holes."""
    tape = rng.random() < 0.8
    tape_width = rng.uniform(0.045, 0.075)
    tape_color, tape_alpha = [((0.78, 0.62, 0.42), 0.5), ((0.55, 0.38, 0.2), 0.85),
                              ((0.9, 0.9, 0.88), 0.9)][rng.integers(3)]
    flap = rng.uniform(0.04, 0.09)
    ink = rng.uniform(0.05, 0.6, 3) if rng.random() < 0.35 else None
    color = box.color
    if design is not None:
        ink = None
        color = box.color if design["color"] is None else design["color"]
        tape_color, tape_alpha = design["tape"] or (tape_color, tape_alpha)
    faces = []
    for kind, origin, e1, e2, extent, normal in box_sides(box):
        a, b = extent
        decals = []
        if kind == "top":  # the flaps meet along the middle, taped over or showing a dark seam
            half = tape_width / 2 if tape else 0.002
            seam_color, alpha = (tape_color, tape_alpha) if tape else ((0.2, 0.15, 0.1), 0.6)
            decals.append((0, a, b / 2 - half, b / 2 + half, seam_color, alpha, DECALS["plain"]))
        if kind == "end" and tape:
            decals.append((a / 2 - tape_width / 2, a / 2 + tape_width / 2, 0, flap, tape_color, tape_alpha,
                           DECALS["plain"]))
        if kind != "bottom" and rng.random() < (0.15 if kind == "top" else 0.3):
            decals.append((*random_rect(rng, extent, 0.07, 0.16), (0.95, 0.95, 0.93), 1.0, DECALS["label"]))
        if kind in ("side", "end") and ink is not None:
            decals.append((*random_rect(rng, extent, 0.05, 0.3), ink, 0.9, DECALS["plain"]))
        if design is not None:
            decals += printed_decals(design, kind, a, b)
        faces.append(Face(origin, e1, e2, normal, extent, color, MATERIALS["carton"]["texture"], label,
                          kind == "top", decals))
    return faces


def cabinet_decals(kind, a, b):
    """A machine cabinet's face: two doors, a rail, a vent grille low down, a dark display up high."""
    if kind not in ("side", "end"):
        return []
    seam = (0.15, 0.15, 0.16)
    return [(a / 2 - 0.003, a / 2 + 0.003, 0.02, b, seam, 0.8, DECALS["plain"]),
            (0, a, 0.3 * b, 0.3 * b + 0.006, seam, 0.8, DECALS["plain"]),
            (0.1 * a, 0.42 * a, 0.75 * b, 0.92 * b, (0.12, 0.12, 0.13), 0.9, DECALS["vent"]),
            (0.6 * a, 0.85 * a, 0.08 * b, 0.16 * b, (0.05, 0.08, 0.1), 1.0, DECALS["plain"])]


def structure_faces(box):
    faces = []
    for kind, origin, e1, e2, extent, normal in box_sides(box):
        decals = []
        if box.material == "plastic" and kind == "side":  # a crate's handle hole
            a, b = extent
            decals.append((a / 2 - 0.06, a / 2 + 0.06, b * 0.1, b * 0.1 + 0.03, (0.05, 0.05, 0.05), 1.0,
                           DECALS["plain"]))
        if box.material == "cabinet":
            decals += cabinet_decals(kind, *extent)
        faces.append(Face(origin, e1, e2, normal, extent, box.color, MATERIALS[box.material]["texture"],
                          decals=decals, pattern=box.pattern, distractor=box.distractor))
    return faces


def background_planes(rng, view, camera, look="train"):
    """Floor with markings, a back wall with posters and sometimes a side wall; all infinite planes."""
    floors, walls_paint = LOOKS[look]["floor"], LOOKS[look]["wall"]
    floor_color = jitter(rng, floors[rng.integers(len(floors))])
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
        paint = jitter(rng, walls_paint[rng.integers(len(walls_paint))])
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
        for d, (s0, s1, t0, t1, color, alpha, kind) in enumerate(face.decals):
            decals[f, d] = [s0, s1, t0, t1, *color, alpha, kind]
    normals = np.array([f.normal for f in faces])
    direct, ambient = light
    sunlit = np.clip(normals @ direct, 0, None)
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
        "pattern": np.array([f.pattern for f in faces]),
        "distractor": np.array([f.distractor for f in faces]),
        "sunlit": sunlit,  # the direct light's share of the shade, which a shadow takes away
        "shade": ambient + sunlit,
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


def decal_cover(kind, u, v, noise, ds, dt, height):
    """Which pixels of their decal rectangles the decals paint (u, v: position in it, 0 to 1), and which of
    those are dark ink (a label's text lines come later): round logos and hand holes fill an ellipse; large
    characters are 3x5-cell glyphs drawn from the noise; barcodes and vents are bars."""
    cover = np.ones(len(kind), bool)
    ink = np.zeros(len(kind), bool)
    round_ = (kind == DECALS["logo"]) | (kind == DECALS["hole"])
    cover[round_] = ((u[round_] - 0.5) ** 2 + (v[round_] - 0.5) ** 2 < 0.25)
    text = np.flatnonzero(kind == DECALS["text"])
    if len(text):
        char = ds[text] / (0.7 * height[text])  # characters 0.7 of the line height wide
        column, row = np.floor((char % 1) * 4), np.floor(v[text] * 6)  # a 3x5 cell glyph with 1 cell of space
        glyph = sample(noise, np.floor(char) * 37 + row * 5, column * 11) > -0.15
        cover[text] = glyph & (column < 3) & (row < 5)
    bars = np.flatnonzero(kind == DECALS["barcode"])
    ink[bars] = (sample(noise, np.zeros(len(bars)), u[bars] * 300) > 0) & (v[bars] < 0.75) & (u[bars] % 1 > 0.05)
    vent = np.flatnonzero(kind == DECALS["vent"])
    cover[vent] = (dt[vent] * 80) % 1 < 0.5  # 6 mm slats
    return cover, ink


def weave(pattern, s, t):
    """Brightness factor of upholstery: woven threads, ribs, or quilting with seams between the pads."""
    kind, period, contrast = pattern.T
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = s / period, t / period
    wave = np.zeros(len(kind), np.float32)
    woven, ribbed, quilted = kind == PATTERNS["woven"], kind == PATTERNS["ribbed"], kind == PATTERNS["quilted"]
    wave[woven] = np.sin(2 * np.pi * u[woven]) * np.sin(2 * np.pi * v[woven])
    wave[ribbed] = np.sin(2 * np.pi * u[ribbed])
    a, b = (u[quilted] + v[quilted]) / 2 % 1, (u[quilted] - v[quilted]) / 2 % 1
    wave[quilted] = np.where(np.minimum.reduce([a, 1 - a, b, 1 - b]) < 0.04, -2.0, 0.5 * np.cos(2 * np.pi * a))
    return 1 + np.nan_to_num(contrast * wave)


def paint(table, face_id, depth, rays, noise, shadow=None):
    """Colour each pixel from the face it sees: textured base, weave, decals, creases, then lighting (less
    the direct light where `shadow`, per pixel in [0, 1], says a box stands in the sun's way)."""
    table = {name: column.astype(np.float32) for name, column in table.items()}  # plenty for colours
    fid = face_id.ravel()
    points = (rays * np.where(np.isfinite(depth), depth, 0)[..., None]).reshape(-1, 3).astype(np.float32)
    offset = points - table["origin"][fid]
    s = np.einsum("pc,pc->p", offset, table["e1"][fid])
    t = np.einsum("pc,pc->p", offset, table["e2"][fid])
    texture, shift = table["texture"][fid], table["offset"][fid]
    grain = sample(noise, t * texture[:, 1] + shift[:, 1], s * texture[:, 0] + shift[:, 0])
    rgb = table["color"][fid] * (1 + texture[:, 2] * grain)[:, None]
    woven = np.flatnonzero(table["pattern"][fid, 0] > 0)
    rgb[woven] *= weave(table["pattern"][fid[woven]], s[woven], t[woven])[:, None]
    for k in range(MAX_DECALS):
        decal = table["decals"][:, k]
        hit = np.flatnonzero(decal[fid, 1] > decal[fid, 0])
        d, ds, dt = decal[fid[hit]], s[hit], t[hit]
        inside = (ds >= d[:, 0]) & (ds < d[:, 1]) & (dt >= d[:, 2]) & (dt < d[:, 3])
        hit, d, ds, dt = hit[inside], d[inside], ds[inside], dt[inside]
        color = d[:, 4:7]
        kind = d[:, 8].astype(int)
        if (kind > DECALS["label"]).any():  # the printed switch's and the cabinets' decals
            cover, dark = decal_cover(kind, (ds - d[:, 0]) / (d[:, 1] - d[:, 0]), (dt - d[:, 2]) / (d[:, 3] - d[:, 2]),
                                      noise, ds - d[:, 0], dt - d[:, 2], d[:, 3] - d[:, 2])
            color[dark] = 0.05
            hit, d, color, ds, dt, kind = hit[cover], d[cover], color[cover], ds[cover], dt[cover], kind[cover]
        # Shipping labels carry lines of "text": 12 mm rows, words cut from the noise texture.
        row = (dt - d[:, 2]) / 0.012
        margin = np.minimum.reduce([ds - d[:, 0], d[:, 1] - ds, d[:, 3] - dt])
        ink = (kind == DECALS["label"]) & (row % 1 < 0.45) & (row >= 1) & (margin > 0.01)
        ink &= sample(noise, row * 41, ds * 150) > -0.1
        color[ink] = 0.15
        rgb[hit] = rgb[hit] * (1 - d[:, 7:8]) + color * d[:, 7:8]
    # Carton edges show as darker creases, which is what separates touching cartons in real photos; the
    # look-alikes have the same edges, so that creases alone do not say "carton".
    extent = table["extent"][fid]
    rim = np.minimum.reduce([s, extent[:, 0] - s, t, extent[:, 1] - t])
    rgb[((table["label"][fid] > 0) | (table["distractor"][fid] > 0)) & (rim < 0.004)] *= 0.75
    shade = table["shade"][fid]
    if shadow is not None:
        shade = shade - table["sunlit"][fid] * shadow.ravel().astype(np.float32)
    rgb *= shade[:, None]
    return rgb.reshape(*face_id.shape, 3)


def in_shadow(points, boxes, sun):
    """Per world point, whether a box stands between it and the sun (`sun`: unit vector toward the light).

    A slab test of the ray towards the sun against every box; the floor and walls cast none. Only points
    whose ray passes within the box's bounding sphere are tested, seen along the sun's rays.
    """
    shadowed = np.zeros(len(points), bool)
    across = np.linalg.svd(sun[None])[2][1:]  # two unit vectors square to the sun
    flat, height = points @ across.T, points @ sun
    for box in boxes:
        reach = np.linalg.norm(box.size) / 2
        near = np.flatnonzero((((flat - box.center @ across.T) ** 2).sum(1) < reach ** 2)
                              & (height < box.center @ sun + reach))
        turn = rot_z(box.yaw)
        local, toward = (points[near] - box.center) @ turn, sun @ turn  # in the box's frame
        with np.errstate(divide="ignore", invalid="ignore"):
            low, high = (-box.size / 2 - local) / toward, (box.size / 2 - local) / toward
        enter, leave = np.minimum(low, high).max(1), np.maximum(low, high).min(1)
        shadowed[near] |= (enter < leave) & (enter > 1e-4)  # a point on the box itself only leaves it
    return shadowed


def soft_shadows(rng, boxes, sun, camera, rays, depth):
    """Shadow per pixel in [0, 1]: computed on every other pixel, then blurred into a penumbra."""
    seen = np.isfinite(depth[::2, ::2])
    points = rays[::2, ::2][seen] * depth[::2, ::2][seen][:, None] @ camera.rotation + camera.position
    hard = np.zeros(seen.shape, np.float32)
    hard[seen] = in_shadow(points, boxes, sun)
    soft = cv2.resize(hard, (camera.width, camera.height), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(soft, (0, 0), rng.uniform(0.5, 2.5) * camera.width / 640)


def motion_blur(rgb, length, angle):
    """Smear along a line of `length` pixels at `angle` radians, as a camera moving during exposure."""
    kernel = np.zeros((length, length), np.float32)
    centre, reach = (length - 1) / 2, (length - 1) / 2 * np.array([math.cos(angle), math.sin(angle)])
    start, end = np.round(centre - reach).astype(int), np.round(centre + reach).astype(int)
    cv2.line(kernel, tuple(int(v) for v in start), tuple(int(v) for v in end), 1.0)
    return cv2.filter2D(rgb, -1, kernel / kernel.sum())


def jpeg_artefacts(rgb, quality):
    """The image after a round trip through JPEG at `quality`: blocks and ringing, as a compressed stream."""
    bgr = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])[1]
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32)


def shot_noise(rng, rgb, strength):
    """Photon noise: its spread grows with the square root of the signal (float image in [0, 255])."""
    return rgb + rng.standard_normal(rgb.shape, np.float32) * np.sqrt(np.clip(rgb, 0, None)) * strength


def sensor_effects(rng, rgb):
    """The sensor switch on a float image in [0, 255]: shot noise that grows with the signal, then defocus
    or motion blur or neither, then (mostly) JPEG at a low quality."""
    scale = max(rgb.shape[1] / 640, 0.5)  # blur in pixels of a 640-wide image
    rgb = shot_noise(rng, rgb, rng.uniform(0.3, 1.0))
    blur = rng.integers(3)
    if blur == 1:
        rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(1.0, 2.5) * scale)
    elif blur == 2:
        rgb = motion_blur(rgb, int(round(rng.uniform(4, 11) * scale)), rng.uniform(0, math.pi))
    if rng.random() < 0.7:
        rgb = jpeg_artefacts(rgb, rng.integers(15, 60))
    return rgb


def finish(rng, rgb, gains=None, sensor=False):
    """Uneven light, a little blur and sensor noise; float RGB in [0, 1] to uint8. gains: per channel,
    exposure times white balance (lighting switch); sensor: the sensor switch's effects."""
    height, width = rgb.shape[:2]
    light = cv2.resize(rng.uniform(0.75, 1.15, (3, 4)), (width, height), interpolation=cv2.INTER_CUBIC)
    rgb = (rgb * light[..., None] * rng.uniform(0.92, 1.08, 3) * 255).astype(np.float32)
    if gains is not None:
        rgb *= gains.astype(np.float32)
    rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.3, 0.9))
    rgb += rng.standard_normal(rgb.shape, np.float32) * rng.uniform(1, 4)
    if sensor:
        rgb = sensor_effects(rng, rgb)
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
    distractor: np.ndarray  # (H, W) bool; the pixel shows a look-alike (negatives, interiors switches)
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


def camera_gains(rng, look):
    """Exposure from dark to blown out times a white balance from the look's range (red up, blue down)."""
    ranges = LOOKS[look]["white_balance"]
    balance = rng.uniform(*ranges[rng.integers(len(ranges))])
    return np.exp(rng.uniform(np.log(0.5), np.log(1.7))) * np.array([1 + balance, 1.0, 1 - balance])


def render_scene(rng=None, width=640, height=480, kind=None, style=PLAIN):
    """Render one random scene.

    rng: a seed or np.random.Generator. kind: "pallet", "loose", "trunk", "shelf", "empty" (one of those
    layouts without its cartons) or None for a random layout. style: the switches (synthetic.style); the
    default is the plain generator.
    """
    rng = np.random.default_rng(rng)
    look = LOOKS[style.look]
    kind = kind or str(rng.choice(list(LAYOUT_ODDS), p=list(LAYOUT_ODDS.values())))
    layout = str(rng.choice(list(LAYOUTS))) if kind == "empty" else kind
    boxes, (azimuth, elevation) = LAYOUTS[layout](rng, style)
    if chance(rng, style.negatives):
        boxes = negatives(rng, style.look, boxes, beside=layout != "trunk")
    view = view_around(boxes, azimuth, elevation)  # an empty scene's camera frames where the cartons were
    if kind == "empty":
        boxes = [b for b in boxes if b.material != "carton"]
    camera = sample_camera(rng, view, width, height, style)
    boxes += clutter(rng, view, camera, style.look)
    cartons = [b for b in boxes if b.material == "carton"]
    faces = background_planes(rng, view, camera, style.look)
    designs = {}  # per carton type
    for label, box in enumerate(cartons, 1):
        if box.sku not in designs:
            designs[box.sku] = print_design(rng, style.look) if chance(rng, style.printed) else None
        faces += carton_faces(rng, box, label, designs[box.sku])
    for box in boxes:
        if box.material != "carton":
            faces += structure_faces(box)
    lit = chance(rng, style.lighting)  # one strong sun: lower ambient light, so its shadows show
    elevation, azimuth = math.radians(rng.uniform(*look["light_elevation"])), rng.uniform(0, 2 * math.pi)
    sun = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                    math.sin(elevation)])
    strength = rng.uniform(0.6, 1.0) if lit else rng.uniform(0.35, 0.7)
    table = face_table(faces, camera, (sun * strength, rng.uniform(0.15, 0.4) if lit else rng.uniform(0.35, 0.6)))
    rays = camera.rays()
    face_id, depth = rasterise(table, camera, rays)
    shadow = soft_shadows(rng, boxes, sun, camera, rays, depth) if lit else None
    rgb = paint(table, face_id, depth, rays, noise_texture(rng, look["noise_beta"]), shadow)
    image = finish(rng, rgb, camera_gains(rng, style.look) if lit else None, chance(rng, style.sensor))
    millimetres = np.where(depth < 65.5, np.round(depth * 1000), 0).astype(np.uint16)
    return Scene(image, table["label"][face_id], table["top"][face_id], table["distractor"][face_id], millimetres,
                 camera, [carton_in_camera(b, camera) for b in cartons], kind)
