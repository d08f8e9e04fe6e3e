"""The shapes judge: a small supervised CNN that names an image's shape, colour and background.

It is independent of the CLIP model that guides generation, so it can score prompt fidelity
honestly. Its shape head has a fourth class, ``other``: not one clean circle, square or triangle
(several shapes, a blob of merged shapes, a shape with a piece missing), which is what generation
paints when it fails. ``predict(..., forced_choice=True)`` reads the best of the three shapes instead.
Train it with ``python -m pixgen.packs.shapes.train_judge``; the shipped weights live in
``pixgen/packs/shapes/weights/shapes-judge.safetensors`` (fp16, architecture in the file's metadata).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pixgen.errors import CheckpointError, ModelNotAvailable
from pixgen.packs.shapes.world import ATTRIBUTES, COLOUR_NAMES, IMAGE_SIZE, SHAPES

DEFAULT_PATH = Path(__file__).resolve().parent / "weights" / "shapes-judge.safetensors"
FORMAT = "pixgen-shapes-judge"
OTHER = "other"  # the shape class for "not one clean shape"
# Class names of each head, in output order.
CLASSES: dict[str, tuple[str, ...]] = {"shape": (*SHAPES, OTHER), "colour": COLOUR_NAMES, "background": COLOUR_NAMES}


@dataclass
class JudgeConfig:
    """Architecture of the judge CNN."""

    width: int = 24  # channels at 64 px; later stages (32, 16, 8 px) use 2, 4 and 4 times as many
    dropout: float = 0.1  # dropout before the heads (training only)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class JudgeNet(nn.Module):
    """Four conv stages (64→32→16→8 px), global average and max pooling, one linear head per attribute."""

    def __init__(self, cfg: JudgeConfig | None = None):
        super().__init__()
        self.cfg = cfg or JudgeConfig()
        w = self.cfg.width
        self.features = nn.Sequential(
            _conv(3, w), nn.MaxPool2d(2),
            _conv(w, 2 * w), _conv(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv(2 * w, 4 * w), _conv(4 * w, 4 * w), nn.MaxPool2d(2),
            _conv(4 * w, 4 * w),
        )  # fmt: skip
        self.dropout = nn.Dropout(self.cfg.dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(8 * w, len(names)) for name, names in CLASSES.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for images in [0, 1], [N, 3, 64, 64]."""
        h = self.features(images * 2 - 1)
        pooled = self.dropout(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))
        return {name: head(pooled) for name, head in self.heads.items()}


class Judge:
    """A trained JudgeNet in eval mode, with name-level predictions."""

    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Class probabilities per attribute, [N, classes], for float images [N, 3, H, W] in [0, 1]."""
        images = images.float()
        if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
        chunks = [self.net(chunk) for chunk in images.split(batch_size)]
        return {name: torch.cat([c[name] for c in chunks]).softmax(dim=1) for name in CLASSES}

    def predict(self, images: torch.Tensor, forced_choice: bool = False) -> list[dict[str, str]]:
        """Predicted names, one dict {shape, colour, background} per image in [0, 1], [N, 3, H, W].

        The shape may be ``other``; with ``forced_choice`` it is the likeliest of circle, square and triangle.
        """
        return _names(self.probabilities(images), forced_choice)

    def predict_both(self, images: torch.Tensor) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """The strict and the forced-choice predictions (see predict) from one pass of the network."""
        probabilities = self.probabilities(images)
        return _names(probabilities, forced_choice=False), _names(probabilities, forced_choice=True)

    def accuracy(self, images: torch.Tensor, expected: Sequence[dict[str, str | None]]) -> dict[str, float]:
        """Fraction correct per attribute an expected dict names (None: not scored), plus "all" correct."""
        predicted = self.predict(images)
        scored = {name: [(p[name], e[name]) for p, e in zip(predicted, expected, strict=True) if e.get(name)]
                  for name in ATTRIBUTES}
        result = {name: sum(p == e for p, e in pairs) / len(pairs) for name, pairs in scored.items() if pairs}
        result["all"] = sum(all(p[n] == e[n] for n in ATTRIBUTES if e.get(n)) for p, e in zip(predicted, expected,
                                                                                             strict=True))
        result["all"] /= max(1, len(predicted))
        return result


def _names(probabilities: dict[str, torch.Tensor], forced_choice: bool) -> list[dict[str, str]]:
    """The likeliest class name per attribute and image; forced_choice leaves ``other`` out of the shapes."""
    if forced_choice:
        probabilities = {**probabilities, "shape": probabilities["shape"][:, : len(SHAPES)]}
    indices = {name: p.argmax(dim=1).tolist() for name, p in probabilities.items()}
    count = len(indices["shape"])
    return [{name: CLASSES[name][indices[name][i]] for name in CLASSES} for i in range(count)]


def judge_metadata(cfg: JudgeConfig) -> dict[str, str]:
    """Metadata stored beside the weights: format, architecture and class names."""
    return {"format": FORMAT, "config": json.dumps(asdict(cfg)), "classes": json.dumps(CLASSES)}


def load_judge(path: str | Path | None = None) -> Judge:
    """Load the judge from an fp16 safetensors file (default: the weights shipped in the package).

    A file that is not readable safetensors, lacks the judge's metadata or holds other tensors
    (names or shapes) than the architecture its metadata describes is one CheckpointError naming it;
    the tensors' data are read only once their names and shapes fit.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise ModelNotAvailable(
            f"Judge weights not found at {path}; train them with "
            "`python -m pixgen.packs.shapes.train_judge --out pixgen/packs/shapes/weights/shapes-judge.safetensors`."
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a shapes judge (format {metadata.get('format')!r}, "
                                      f"expected {FORMAT!r}).")
            if _json(metadata, "classes", path) != {name: list(names) for name, names in CLASSES.items()}:
                raise CheckpointError(f"{path} was trained for other classes than {CLASSES}; retrain it.")
            cfg = _judge_config(_json(metadata, "config", path), path)
            _check_tensors(path, cfg, {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})  # noqa: SIM118
            state = {key: f.get_tensor(key).float() for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason}).") from None
    net = JudgeNet(cfg)
    net.load_state_dict(state)
    return Judge(net)


def _json(metadata: dict[str, str], key: str, path: Path):
    """A JSON value of the judge's metadata; one line when it is missing or not JSON."""
    try:
        return json.loads(metadata[key])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} is not a shapes judge: its metadata has no readable {key!r}.") from None


def _judge_config(data, path: Path) -> JudgeConfig:
    """The JudgeConfig the metadata records, checked: known fields, a sane width and dropout."""
    names = {f.name for f in fields(JudgeConfig)}
    if not isinstance(data, dict) or not set(data) <= names:
        raise CheckpointError(f"{path} is not a shapes judge: its metadata's 'config' is not a judge "
                              f"architecture (fields {sorted(names)}).")
    cfg = JudgeConfig(**data)
    width_ok = isinstance(cfg.width, int) and not isinstance(cfg.width, bool) and 1 <= cfg.width <= 4096
    dropout_ok = isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1
    if not (width_ok and dropout_ok):
        raise CheckpointError(f"{path} is not a shapes judge: its metadata's 'config' has width {cfg.width!r} "
                              f"and dropout {cfg.dropout!r}.")
    return cfg


def _check_tensors(path: Path, cfg: JudgeConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a file whose tensor names or shapes differ from the architecture's, in one line."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        expected = {key: tuple(value.shape) for key, value in JudgeNet(cfg).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        parts = [f"{len(missing)} tensor(s) missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""]
        raise CheckpointError(f"{path} does not hold the tensors of a shapes judge of width {cfg.width}: "
                              f"{', '.join(p for p in parts if p)}.")
    for key, shape in expected.items():
        if shapes[key] != shape:
            raise CheckpointError(f"{path} does not hold the tensors of a shapes judge of width {cfg.width}: "
                                  f"{key} is {list(shapes[key])}, expected {list(shape)}.")
