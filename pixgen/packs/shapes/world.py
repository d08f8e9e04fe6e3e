"""The shapes world: 64×64 images of one coloured shape on a plain background, and their captions.

A scene is one shape (circle, square, triangle) in one of 8 colours on a uniform background of a
different colour: 3 × 8 × 7 = 168 (shape, colour, background) combinations. Each scene also has a
size class ("small" or "large", which captions may mention), a random position, a small rotation
(squares and triangles) and slight per-channel colour jitter. Edges are antialiased with analytic
coverage (the signed distance to the outline, clamped to one pixel), vectorised with numpy, so a
60 k-image training set renders in seconds.

Held-out split
--------------
``HELD_OUT_COMBOS`` lists 24 combinations that no training set ever uses. For shape number ``s``
(circle 0, square 1, triangle 2) and colour number ``c`` (in ``COLOURS`` order: red, green, blue,
yellow, purple, orange, white, black) the held-out background is colour number
``(c + 2*s + 1) % 8``. So each shape holds out 8 combinations, one per colour and one per
background: every colour and every background still appears with every shape in training (in 6
other combinations), and each (colour, background) pair is held out for at most one shape, so the
pair itself was seen in training with the other two shapes. ``TRAIN_COMBOS`` are the other 144.

Captions
--------
``caption`` describes a scene with a small grammar ("a red circle on a blue background",
"a large yellow square", "green triangle, black background", "an object on a white background",
...), mentioning a random subset of the attributes; ``parse_caption`` reads back the attributes a
text mentions. Everything is deterministic given a ``numpy.random.Generator`` or a seed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 35),
    "purple": (135, 50, 175),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SIZES: tuple[str, ...] = ("small", "large")
CROWD_WORDS: tuple[str, ...] = ("several", "many", "lots of", "a few")  # describe_crowd's quantities
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "background")

# Words captions use for the size classes, and the class each one means.
SIZE_WORDS: dict[str, str] = {"small": "small", "tiny": "small", "little": "small", "large": "large", "big": "large"}
# Range of the shape's radius in pixels for each size class.
RADIUS_RANGE: dict[str, tuple[float, float]] = {"small": (6.0, 10.0), "large": (13.0, 19.0)}
# Circumradius of each shape in units of its radius (squares and triangles get a similar area).
_EXTENT: dict[str, float] = {"circle": 1.0, "square": 0.9 * 2**0.5, "triangle": 1.3}
_MAX_ANGLE = 15.0  # degrees of random rotation for squares and triangles
_JITTER = 12  # per-channel colour jitter, +- this many levels
_MARGIN = 1.0  # pixels kept between the shape and the image border
_CHUNK = 512  # scenes rendered per vectorised batch
BACKGROUND_FIRST_PROB = 0.25  # share of varied captions that name the background first

Combo = tuple[str, str, str]


def _held_out_combos() -> list[Combo]:
    """The documented held-out split: background index (c + 2s + 1) % 8 for each shape s and colour c."""
    n = len(COLOUR_NAMES)
    return [
        (shape, COLOUR_NAMES[c], COLOUR_NAMES[(c + 2 * s + 1) % n])
        for s, shape in enumerate(SHAPES)
        for c in range(n)
    ]


ALL_COMBOS: list[Combo] = [(s, c, b) for s in SHAPES for c in COLOUR_NAMES for b in COLOUR_NAMES if b != c]
HELD_OUT_COMBOS: list[Combo] = _held_out_combos()
TRAIN_COMBOS: list[Combo] = [combo for combo in ALL_COMBOS if combo not in set(HELD_OUT_COMBOS)]
SPLITS: dict[str, list[Combo]] = {"train": TRAIN_COMBOS, "held_out": HELD_OUT_COMBOS, "all": ALL_COMBOS}


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image of the shapes world."""

    shape: str  # one of SHAPES
    colour: str  # the shape's colour, a key of COLOURS
    background: str  # the background colour, a key of COLOURS, never equal to colour
    size: str  # "small" or "large"
    x: float  # centre, in pixels from the left edge
    y: float  # centre, in pixels from the top edge
    radius: float  # circle radius; squares and triangles are scaled to a similar area
    angle: float = 0.0  # rotation in degrees (no effect on circles)
    fg: tuple[int, int, int] | None = None  # RGB actually drawn for the shape; None: COLOURS[colour]
    bg: tuple[int, int, int] | None = None  # RGB actually drawn for the background; None: COLOURS[background]

    @property
    def combo(self) -> Combo:
        """The (shape, colour, background) combination."""
        return (self.shape, self.colour, self.background)

    @property
    def label(self) -> tuple[int, int, int]:
        """Indices of (shape, colour, background) in SHAPES and COLOUR_NAMES."""
        return (SHAPES.index(self.shape), COLOUR_NAMES.index(self.colour), COLOUR_NAMES.index(self.background))


def combos_for_split(split: str) -> list[Combo]:
    """The combinations of a named split: "train", "held_out" or "all"."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Must be one of: {', '.join(SPLITS)}")
    return SPLITS[split]


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """A palette colour with slight independent per-channel jitter."""
    noise = rng.integers(-_JITTER, _JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + noise, 0, 255))


def sample_scene(rng: np.random.Generator, combos: Sequence[Combo] | None = None) -> Scene:
    """A random scene whose (shape, colour, background) is drawn uniformly from combos (default: all)."""
    combos = ALL_COMBOS if combos is None else combos
    shape, colour, background = combos[int(rng.integers(len(combos)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    radius = float(rng.uniform(*RADIUS_RANGE[size]))
    extent = radius * _EXTENT[shape] + _MARGIN
    x, y = (float(v) for v in rng.uniform(extent, IMAGE_SIZE - extent, size=2))
    angle = float(rng.uniform(-_MAX_ANGLE, _MAX_ANGLE))
    fg, bg = _jitter(COLOURS[colour], rng), _jitter(COLOURS[background], rng)
    return Scene(shape, colour, background, size, x, y, radius, angle, fg, bg)


def sample_scenes(n: int, rng: np.random.Generator, combos: Sequence[Combo] | None = None) -> list[Scene]:
    """n random scenes (see sample_scene)."""
    return [sample_scene(rng, combos) for _ in range(n)]


def _polygon_distance(dx: np.ndarray, dy: np.ndarray, normal_deg: np.ndarray, apothem: np.ndarray) -> np.ndarray:
    """Signed distance (exact inside, slightly low near outside corners) to convex regular polygons."""
    theta = np.deg2rad(normal_deg)[:, :, None, None]  # [n, sides, 1, 1]
    proj = dx[:, None] * np.cos(theta) + dy[:, None] * np.sin(theta)  # [n, sides, H, W]
    return proj.max(axis=1) - apothem[:, None, None]


def _signed_distance(scenes: Sequence[Scene]) -> np.ndarray:
    """Signed distance in pixels from every pixel centre to each scene's outline, [n, H, W]."""
    centres = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    x = np.array([s.x for s in scenes], dtype=np.float32)
    y = np.array([s.y for s in scenes], dtype=np.float32)
    r = np.array([s.radius for s in scenes], dtype=np.float32)
    angle = np.array([s.angle for s in scenes], dtype=np.float32)
    dx = centres[None, None, :] - x[:, None, None]
    dy = centres[None, :, None] - y[:, None, None]
    dist = np.empty((len(scenes), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    kind = np.array([s.shape for s in scenes])
    circle, square, triangle = (kind == name for name in SHAPES)
    dist[circle] = np.hypot(dx[circle], dy[circle]) - r[circle, None, None]
    # Square: 4 edge normals; half-side 0.9 r.
    normals = angle[square, None] + np.array([0.0, 90.0, 180.0, 270.0], dtype=np.float32)
    dist[square] = _polygon_distance(dx[square], dy[square], normals, 0.9 * r[square])
    # Triangle pointing up (y grows downwards): base normal at 90°, circumradius 1.3 r, apothem half that.
    normals = angle[triangle, None] + np.array([90.0, 210.0, 330.0], dtype=np.float32)
    dist[triangle] = _polygon_distance(dx[triangle], dy[triangle], normals, 0.65 * r[triangle])
    return dist


def _scene_rgb(scenes: Sequence[Scene], attr: str, name_attr: str) -> np.ndarray:
    """Drawn RGB colours of the scenes' shapes (attr "fg") or backgrounds (attr "bg"), [n, 3] float."""
    rgb = [getattr(s, attr) or COLOURS[getattr(s, name_attr)] for s in scenes]
    return np.array(rgb, dtype=np.float32)


def coverage(scenes: Sequence[Scene]) -> np.ndarray:
    """Fraction of each pixel the shape covers (the antialiasing alpha), float32 [n, 64, 64]."""
    return np.clip(0.5 - _signed_distance(scenes), 0.0, 1.0)


def _render_chunk(scenes: Sequence[Scene]) -> np.ndarray:
    """Render scenes into uint8 [n, H, W, 3] with antialiased edges."""
    alpha = coverage(scenes)
    fg = _scene_rgb(scenes, "fg", "colour")[:, None, None, :]
    bg = _scene_rgb(scenes, "bg", "background")[:, None, None, :]
    out = np.empty((*alpha.shape, 3), dtype=np.uint8)
    for c in range(3):  # one channel at a time: much faster than broadcasting over a last axis of 3
        out[..., c] = alpha * (fg[..., c] - bg[..., c]) + (bg[..., c] + 0.5)  # + 0.5, then truncation rounds
    return out


def render_scenes(scenes: Sequence[Scene]) -> np.ndarray:
    """Render many scenes at once into a uint8 array [n, 64, 64, 3]."""
    out = np.empty((len(scenes), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for start in range(0, len(scenes), _CHUNK):
        out[start : start + _CHUNK] = _render_chunk(scenes[start : start + _CHUNK])
    return out


def render(scene: Scene) -> Image.Image:
    """Render one scene as a 64×64 RGB PIL image."""
    return Image.fromarray(render_scenes([scene])[0], mode="RGB")


def scenes_to_tensors(scenes: Sequence[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered images (uint8 [n, 3, 64, 64]) and (shape, colour, background) labels (int64 [n, 3])."""
    import torch

    images = torch.from_numpy(render_scenes(scenes)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([s.label for s in scenes], dtype=torch.int64).reshape(len(scenes), 3)
    return images, labels


def render_dataset(n: int, seed: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """n seeded random renders of a split's combinations: uint8 images [n, 3, 64, 64] and labels [n, 3]."""
    scenes = sample_scenes(n, np.random.default_rng(seed), combos_for_split(split))
    return scenes_to_tensors(scenes)


def _article(word: str) -> str:
    """The indefinite article for the word that follows it."""
    return "an" if word[0] in "aeiou" else "a"


def _pick(options: Sequence[str], rng: np.random.Generator | None) -> str:
    """The first option without an rng (the canonical wording), else a random one."""
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _object_phrase(noun: str, size: str | None, colour: str | None, rng: np.random.Generator | None) -> str:
    """The object part of a caption: "a large red circle", "red circle", "a small square in red", ..."""
    if colour and rng is not None and rng.random() < 0.15:
        head = f"{size} {noun}" if size else noun
        return f"{_article(head)} {head} in {colour}"
    head = " ".join(word for word in (size, colour, noun) if word)
    return _pick((f"{_article(head)} {head}", head), rng)


def _background_phrase(background: str, rng: np.random.Generator | None) -> str:
    """The background part of a caption: " on a blue background", ", blue background", ..."""
    a = _article(background)
    options = (
        f" on {a} {background} background",
        f" against {a} {background} background",
        f", {background} background",
        f" with {a} {background} background",
        f" against {background}",
    )
    return _pick(options, rng)


def _background_first(obj: str, background: str, rng: np.random.Generator) -> str:
    """A caption that names the background before the object: "a blue background behind a red circle", ...

    Binding must not hang on word order: a CLIP that only ever read the object first takes the first
    colour of "blue background ... red circle" for the shape's.
    """
    a = _article(background)
    return _pick((f"{a} {background} background behind {obj}", f"on {a} {background} background, {obj}"), rng)


def describe(
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
    size: str | None = None,
    rng: np.random.Generator | None = None,
) -> str:
    """A caption mentioning exactly the given attributes; canonical wording without rng, varied with one."""
    noun = shape or _pick(("shape", "object"), rng)
    text = _object_phrase(noun, size, colour, rng)
    if background is None:
        return text
    if rng is not None and rng.random() < BACKGROUND_FIRST_PROB:
        return _background_first(text, background, rng)
    return text + _background_phrase(background, rng)


def describe_crowd(
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
    rng: np.random.Generator | None = None,
) -> str:
    """A caption of several shapes ("several red circles on a blue background"): training negatives only."""
    head = " ".join(w for w in (_pick(CROWD_WORDS, rng), colour, f"{shape or 'shape'}s") if w)
    return head if background is None else f"{head} on {_article(background)} {background} background"


def caption(scene: Scene, rng: np.random.Generator, full_prob: float = 0.5, size_prob: float = 0.3) -> str:
    """A random caption of scene: all of shape/colour/background with probability full_prob, else a subset."""
    if rng.random() < full_prob:
        keep = [True, True, True]
    else:
        keep = [False, False, False]
        while not any(keep):
            keep = [bool(rng.random() < 0.5) for _ in range(3)]
    shape, colour, background = (value if k else None for value, k in zip(scene.combo, keep, strict=True))
    size = scene.size if rng.random() < size_prob else None
    if size is not None and rng.random() < 0.3:  # synonyms: "tiny", "big", ...
        size = _pick([word for word, cls in SIZE_WORDS.items() if cls == size], rng)
    return describe(shape, colour, background, size, rng)


def parse_caption(text: str) -> dict[str, str | None]:
    """The attributes a caption mentions: keys shape, colour, background, size (None when not mentioned)."""
    found: dict[str, str | None] = {"shape": None, "colour": None, "background": None, "size": None}
    words = [w for w in re.findall(r"[a-z]+", text.lower()) if w not in ("a", "an")]
    for i, word in enumerate(words):
        if word in COLOURS:
            after = words[i + 1] if i + 1 < len(words) else ""
            before = words[i - 1] if i > 0 else ""
            on_it = before in ("on", "against") and after not in (*SHAPES, "shape", "object")
            found["background" if after == "background" or on_it else "colour"] = word
        elif word in SHAPES:
            found["shape"] = word
        elif word in SIZE_WORDS:
            found["size"] = SIZE_WORDS[word]
    return found


def held_out_prompts() -> list[str]:
    """One canonical prompt per held-out combination: "a {colour} {shape} on a {background} background"."""
    return [describe(shape, colour, background) for shape, colour, background in HELD_OUT_COMBOS]
