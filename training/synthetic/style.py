"""What a scene may contain beyond the plain generator: the switches, their presets, and the two looks.

Each switch is the odds (0 = off) that a scene, or for `printed` a carton type, uses it. Style() is the
plain generator, byte for byte as before the switches existed; STYLES["full"] is the training recipe;
STYLES["shifted"] is the same content in a look the training set never uses (palettes, textures, light,
distractors), for a validation split that measures how far a model carries beyond what it was shown.
"""

from dataclasses import dataclass, fields, replace

SWITCHES = {
    "negatives": "machine cabinets with panels and vents beside the cartons; painted-metal and plastic cuboids "
                 "among them (never annotated)",
    "interiors": "car-trunk seats, floor and lining, shelf backs and boards, with upholstery-like weaves",
    "printed": "per carton type: a solid print colour, large text, logos, barcodes, hand holes, coloured tape",
    "tight": "pallet layers and shelf rows of identical cartons with 0-3 mm gaps",
    "sizes": "cartons of very different sizes in one scene: big ones beside a pallet of small ones",
    "border": "camera close and off-centre, so cartons are cut by the image border",
    "lighting": "one directional light with soft shadows, exposure from dark to blown out, white balance",
    "sensor": "shot noise, defocus or motion blur, JPEG artefacts",
    "poses": "camera from straight top-down to 5 degrees above the horizon",
}


@dataclass(frozen=True)
class Style:
    negatives: float = 0.0
    interiors: float = 0.0
    printed: float = 0.0
    tight: float = 0.0
    sizes: float = 0.0
    border: float = 0.0
    lighting: float = 0.0
    sensor: float = 0.0
    poses: float = 0.0
    look: str = "train"  # a key of LOOKS

    def __post_init__(self):
        for switch in SWITCHES:
            if not 0.0 <= getattr(self, switch) <= 1.0:
                raise ValueError(f"style switch {switch} is odds in [0, 1], got {getattr(self, switch)}")
        if self.look not in LOOKS:
            raise ValueError(f"style look {self.look!r} is not one of {sorted(LOOKS)}")

    def only(self, switch, odds=1.0):
        """This style with every switch off but one (the look kept): how each switch is measured alone."""
        return replace(self, **{name: odds if name == switch else 0.0 for name in SWITCHES})

    def to_json(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


def chance(rng, odds):
    """True with the given odds; draws nothing when the odds are 0, so switches that are off leave every
    later random draw, and so every byte of the plain generator, unchanged."""
    return odds > 0 and rng.random() < odds


# The look: every colour and texture table a switch or the plain generator picks from. "train" holds the
# plain generator's own values; "shifted" has none of them.
LOOKS = {
    "train": {
        "cardboard": {"kraft": (0.6, (0.74, 0.56, 0.37)), "dark": (0.15, (0.55, 0.39, 0.26)),
                      "white": (0.15, (0.88, 0.87, 0.84)), "printed": (0.1, None)},  # None: any light colour
        "print": [(0.8, 0.1, 0.12), (0.95, 0.55, 0.68), (0.12, 0.3, 0.7), (0.95, 0.95, 0.93), (0.95, 0.8, 0.1),
                  (0.1, 0.55, 0.3), (0.95, 0.45, 0.1)],
        "ink": [(0.05, 0.05, 0.05), (0.8, 0.1, 0.1), (0.1, 0.2, 0.6), (0.95, 0.95, 0.95)],
        "floor": [(0.55, 0.55, 0.53), (0.45, 0.5, 0.45), (0.6, 0.5, 0.4)],
        "wall": [(0.85, 0.85, 0.82), (0.7, 0.72, 0.75), (0.8, 0.75, 0.62)],
        "machine": [(0.93, 0.93, 0.9), (0.82, 0.84, 0.86), (0.2, 0.35, 0.6), (0.95, 0.6, 0.12), (0.5, 0.52, 0.55)],
        "upholstery": [(0.12, 0.12, 0.13), (0.25, 0.25, 0.27), (0.35, 0.3, 0.25)],
        "clutter": ["plastic", "metal", "wood"],
        "noise_beta": 1.8,  # texture roughness: higher is smoother blotches
        "white_balance": [(-0.12, 0.12)],  # ranges of w: red gain 1 + w, blue gain 1 - w
        "light_elevation": (30, 85),  # degrees
    },
    "shifted": {
        "cardboard": {"grey": (0.4, (0.62, 0.6, 0.55)), "olive": (0.3, (0.56, 0.55, 0.36)),
                      "brown": (0.3, (0.42, 0.28, 0.16))},
        "print": [(0.45, 0.2, 0.55), (0.1, 0.55, 0.55), (0.15, 0.15, 0.16), (0.6, 0.8, 0.2), (0.5, 0.15, 0.1)],
        "ink": [(0.95, 0.85, 0.2), (0.2, 0.8, 0.9), (0.55, 0.1, 0.5)],
        "floor": [(0.25, 0.45, 0.35), (0.5, 0.3, 0.25), (0.3, 0.3, 0.32)],
        "wall": [(0.55, 0.28, 0.22), (0.2, 0.25, 0.4), (0.45, 0.5, 0.35)],
        "machine": [(0.25, 0.5, 0.3), (0.85, 0.85, 0.25), (0.6, 0.2, 0.2)],
        "upholstery": [(0.3, 0.15, 0.12), (0.15, 0.2, 0.35), (0.4, 0.4, 0.3)],
        "clutter": ["drum", "sack", "wrapped"],
        "noise_beta": 1.3,
        "white_balance": [(-0.28, -0.15), (0.15, 0.28)],  # casts beyond the training range
        "light_elevation": (15, 40),
    },
}

PLAIN = Style()
STYLES = {
    "plain": PLAIN,
    "full": Style(negatives=0.5, interiors=0.6, printed=0.35, tight=0.5, sizes=0.4, border=0.3, lighting=0.6,
                  sensor=0.5, poses=0.5),
}
STYLES["shifted"] = replace(STYLES["full"], look="shifted")
