"""A whole run as one library call: load models, run the engine, write the outputs.

An output folder holds ``image.png`` (the final image, its recipe in PNG text chunks),
``frames/step-NNNNN.png``, ``progress.gif``, ``run.yaml`` (the resolved config, seed included)
and ``state.pt`` (latents, optimiser and RNG state, to resume an interrupted run).
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError

from pixgen import __version__
from pixgen.config import RunConfig, config_to_yaml, validate
from pixgen.devices import pick_device
from pixgen.engine import Models, Step, generate
from pixgen.errors import ConfigError, InputError, OutputExists
from pixgen.fileio import atomic_path, atomic_write_text
from pixgen.models.factory import Loaded, load_clip, load_vqgan
from pixgen.output import save_gif, save_png, save_video, to_pixels
from pixgen.prompts import parse_image_prompts
from pixgen.registry import load_registry

IMAGE_NAME = "image.png"
GIF_NAME = "progress.gif"
CONFIG_NAME = "run.yaml"
STATE_NAME = "state.pt"
FRAMES_DIR = "frames"
STATE_EVERY = 10  # steps between resume checkpoints when no frames are saved
OUTPUT_NAMES = (IMAGE_NAME, GIF_NAME, CONFIG_NAME, STATE_NAME, FRAMES_DIR)


@dataclass
class RunResult:
    """What a run wrote, and how far it got."""

    output_dir: Path
    image_path: Path
    seed: int
    steps_done: int
    completed: bool  # False when interrupted (Ctrl-C): resume with resume_run()
    frame_paths: list[Path] = field(default_factory=list)
    gif_path: Path | None = None
    loss: float | None = None


def slugify(text: str, limit: int = 48) -> str:
    """A folder-name-safe version of a prompt."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "run"


def default_output_dir(config: RunConfig, root: Path = Path("outputs")) -> Path:
    """``outputs/<prompt-slug>``, numbered so an earlier run is never overwritten."""
    base = root / slugify(config.prompt.split("|")[0].split(":")[0])
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = base.with_name(f"{base.name}-{number}"), number + 1
    return candidate


def claim_output_dir(path: Path, overwrite: bool) -> None:
    """Create the output folder; refuse one that already holds pixgen outputs unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExists(f"output {path} exists and is not a folder")
    existing = [name for name in OUTPUT_NAMES if (path / name).exists()]
    if existing and not overwrite:
        raise OutputExists(f"output folder {path} already holds {existing[0]}; "
                           "pass --overwrite to replace it, or choose another --output")
    if overwrite:
        for frame in (path / FRAMES_DIR).glob("step-*.png"):
            frame.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputExists(f"cannot create output folder {path}: {err.strerror}") from None


def read_image(path: str, what: str) -> torch.Tensor:
    """An image file -> (1, 3, H, W) float tensor in [0, 1]."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except (UnidentifiedImageError, OSError):
        raise InputError(f"{what} {path} is not a readable image") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)


@functools.lru_cache(maxsize=4)
def _load_vqgan_cached(spec: str, device: str) -> Loaded:
    loaded = load_vqgan(spec, load_registry())
    loaded.module.to(device)
    return loaded


@functools.lru_cache(maxsize=8)
def _load_clip_cached(spec: str, device: str) -> Loaded:
    loaded = load_clip(spec, load_registry())
    loaded.module.to(device)
    return loaded


def load_models(config: RunConfig) -> tuple[Models, list[Loaded]]:
    """Load (or reuse, within this process) the run's VQGAN and CLIP models."""
    device = pick_device(config.device)
    vqgan = _load_vqgan_cached(config.vqgan, str(device))
    clips = [_load_clip_cached(spec, str(device)) for spec in config.clip]
    return Models(vqgan.module, [c.module for c in clips], device), [vqgan, *clips]


def png_text(config: RunConfig, loaded: list[Loaded], steps_done: int) -> dict[str, str]:
    """The recipe stored in every output PNG."""
    models = [{"name": m.name, "sha256": m.sha256} for m in loaded]
    return {
        "Software": f"pixgen {__version__}",
        "prompt": config.prompt,
        "seed": str(config.seed),
        "steps_done": str(steps_done),
        "models": yaml.safe_dump(models, sort_keys=False),
        "config": config_to_yaml(config),
    }


def _inputs(config: RunConfig) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    init_image = read_image(config.init_image, "init image") if config.init == "image" else None
    images = {p.source: read_image(p.source, "image prompt") for p in parse_image_prompts(config.image_prompts)}
    return init_image, images


def run(config: RunConfig, output_dir: Path | None = None, *, overwrite: bool = False,
        on_step: Callable[[Step], None] | None = None, resume: dict | None = None) -> RunResult:
    """Generate one image for ``config`` and write every output into ``output_dir``.

    Ctrl-C (KeyboardInterrupt) stops early but keeps the work: the current image, the frames,
    the GIF and ``state.pt`` are written, and ``RunResult.completed`` is False.
    """
    if config.seed is None:
        config = replace(config, seed=secrets.randbelow(2**31))
    validate(config)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(config)
    init_image, prompt_images = _inputs(config)
    models, loaded = load_models(config)
    if resume is None:
        claim_output_dir(output_dir, overwrite)
    atomic_write_text(output_dir / CONFIG_NAME, config_to_yaml(config))

    frames = sorted((output_dir / FRAMES_DIR).glob("step-*.png")) if resume else []
    last: Step | None = None
    completed = False
    try:
        for last in generate(config, models, init_image=init_image, prompt_images=prompt_images,
                             resume=resume):
            if on_step is not None:
                on_step(last)
            if last.step % (config.save_every or STATE_EVERY) == 0 and last.step < config.steps:
                if config.save_every:
                    frames.append(output_dir / FRAMES_DIR / f"step-{last.step:05d}.png")
                    save_png(frames[-1], to_pixels(last.image()))
                save_state(output_dir / STATE_NAME, last)
        completed = True
    except KeyboardInterrupt:
        pass
    if last is None:
        raise KeyboardInterrupt
    return _finish(config, output_dir, last, loaded, frames, completed)


def _finish(config: RunConfig, output_dir: Path, last: Step, loaded: list[Loaded],
            frames: list[Path], completed: bool) -> RunResult:
    pixels = to_pixels(last.image())
    image_path = output_dir / IMAGE_NAME
    save_png(image_path, pixels, png_text(config, loaded, last.step))
    save_state(output_dir / STATE_NAME, last)
    gif_path = None
    if config.gif:
        gif_path = output_dir / GIF_NAME
        gif_frames = [np.asarray(Image.open(path).convert("RGB")) for path in frames] + [pixels]
        save_gif(gif_path, gif_frames, config.gif_fps)
    return RunResult(output_dir, image_path, config.seed, last.step, completed, frames, gif_path, last.loss)


def export_animation(output_dir: Path, fmt: str = "mp4", fps: float = 10.0, path: Path | None = None,
                     overwrite: bool = False) -> Path:
    """Turn a run folder's frames and final image into an MP4 or GIF of the image forming."""
    output_dir = Path(output_dir)
    sources = sorted((output_dir / FRAMES_DIR).glob("step-*.png"))
    if (output_dir / IMAGE_NAME).is_file():
        sources.append(output_dir / IMAGE_NAME)
    if not sources:
        raise InputError(f"{output_dir} holds no frames or {IMAGE_NAME} to export")
    path = Path(path) if path is not None else output_dir / f"progress.{fmt}"
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} exists; pass --overwrite to replace it")
    frames = [np.asarray(Image.open(source).convert("RGB")) for source in sources]
    if fmt == "gif":
        save_gif(path, frames, fps)
    else:
        save_video(path, frames, fps)
    return path


def save_state(path: Path, step: Step) -> None:
    """Write the resume checkpoint (tensors and numbers only, readable with weights_only=True)."""
    with atomic_path(path) as temp:
        torch.save(step.checkpoint(), temp)


def resume_run(output_dir: Path, *, steps: int | None = None,
               on_step: Callable[[Step], None] | None = None) -> RunResult:
    """Continue an interrupted run from its ``state.pt``; ``steps`` may raise the total."""
    output_dir = Path(output_dir)
    config_path, state_path = output_dir / CONFIG_NAME, output_dir / STATE_NAME
    if not config_path.is_file() or not state_path.is_file():
        raise InputError(f"{output_dir} is not a pixgen run folder (no {CONFIG_NAME} or {STATE_NAME})")
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    try:
        config = RunConfig(**data)
    except TypeError as err:
        raise ConfigError(f"{config_path} is not a pixgen run config ({err})") from None
    if steps is not None:
        config = replace(config, steps=steps)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state["step"] >= config.steps:
        raise InputError(f"{output_dir} already ran {state['step']} of {config.steps} steps; "
                         "pass --steps with a larger total to continue")
    return run(config, output_dir, on_step=on_step, resume=state)
