"""A whole run as one library call: load models, run the engine, write the outputs.

An output folder holds ``image.png`` (the final image, its recipe in PNG text chunks),
``frames/step-NNNNN.png``, ``progress.gif``, ``run.yaml`` (the resolved config, seed included)
and ``state.pt`` (latents, optimiser and RNG state, to resume an interrupted run).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pixgen.config import RunConfig, config_from_mapping, config_to_yaml, read_yaml_mapping, validate
from pixgen.engine.loop import OPTIMIZERS, Models, Step, generate, latent_grid
from pixgen.errors import InputError, OutOfMemory, OutputError, OutputExists
from pixgen.fileio import atomic_path, atomic_write_text
from pixgen.folder_lock import hold_folder
from pixgen.models.factory import Loaded, load_clip, load_vqgan
from pixgen.models.registry import load_registry
from pixgen.pipeline.devices import pick_device
from pixgen.pipeline.memory import check_memory, is_out_of_memory, out_of_memory_message
from pixgen.pipeline.output import IMAGE_FORMATS, read_pixels, save_gif, save_image, save_png, to_pixels
from pixgen.pipeline.recipe import input_hashes, png_text, prompts_read_as
from pixgen.prompts import parse_image_prompts

__all__ = ["RunResult", "run", "resume_run", "load_models", "png_text", "slugify"]

IMAGE_NAME = "image.png"
GIF_NAME = "progress.gif"
CONFIG_NAME = "run.yaml"
STATE_NAME = "state.pt"
FRAMES_DIR = "frames"
RUN_FOLDER_SUFFIX = ".pixgen"  # -o cat.png: the run's other files go in cat.png.pixgen/
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
    read_as: dict[str, str] = field(default_factory=dict)  # text prompts restated for the bundled models


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


def run_location(output: Path) -> tuple[Path, Path]:
    """(run folder, final image path) for what ``-o`` names.

    A path with an image suffix (``cat.png``, ``.jpg``, ``.webp``) that is not an existing folder
    is the image itself; the run's other files go in the sibling folder ``cat.png.pixgen``. That
    folder, given back, points at its image again. Anything else is the run folder, holding
    ``image.png``.
    """
    output = Path(output)
    if output.suffix.lower() in IMAGE_FORMATS and not output.is_dir():
        return output.with_name(output.name + RUN_FOLDER_SUFFIX), output
    if output.name.endswith(RUN_FOLDER_SUFFIX) and Path(output.name[:-len(RUN_FOLDER_SUFFIX)]).suffix.lower() \
            in IMAGE_FORMATS:
        return output, output.with_name(output.name[:-len(RUN_FOLDER_SUFFIX)])
    return output, output / IMAGE_NAME


def claim_image_path(image: Path, folder: Path, overwrite: bool) -> None:
    """Refuse an existing image file named by ``-o`` unless ``overwrite`` (it is replaced at the end)."""
    if image.parent != folder and image.exists() and (not overwrite or image.is_dir()):
        raise OutputExists(f"{image} exists; pass --overwrite to replace it, or choose another --output")


def claim_output_dir(path: Path, overwrite: bool) -> bool:
    """Create the output folder (True if it was created); refuse one holding pixgen outputs unless ``overwrite``.

    With ``overwrite``, the earlier run's outputs (and only those) are removed: call this only once
    the new run is known to start.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExists(f"output {path} exists and is not a folder")
    existing = [name for name in OUTPUT_NAMES if (path / name).exists()]
    if existing and not overwrite:
        raise OutputExists(f"output folder {path} already holds {existing[0]}; "
                           "pass --overwrite to replace it, or choose another --output")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            remove_outputs(path)
    except OSError as err:
        raise OutputError(f"cannot create output folder {path}: {err.strerror}") from None
    return created


def remove_outputs(path: Path) -> None:
    """Delete the files a pixgen run writes in ``path`` (and nothing else)."""
    for frame in (path / FRAMES_DIR).glob("step-*.png"):
        frame.unlink()
    if (path / FRAMES_DIR).is_dir() and not any((path / FRAMES_DIR).iterdir()):
        (path / FRAMES_DIR).rmdir()
    for name in (IMAGE_NAME, GIF_NAME, CONFIG_NAME, STATE_NAME):
        if (path / name).is_file():
            (path / name).unlink()


def read_image(path: str, what: str) -> torch.Tensor:
    """An image file -> (1, 3, H, W) float tensor in [0, 1]; one-line InputError as output.open_image."""
    pixels = read_pixels(path, what).astype(np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)


LoadReport = Callable[[str, float | None], None]  # (model name, None) when loading starts, (name, seconds) at the end
_on_load: ContextVar[LoadReport | None] = ContextVar("on_load", default=None)


@contextmanager
def _reported(name: str) -> Iterator[None]:
    report, start = _on_load.get(), time.perf_counter()
    if report is not None:
        report(name, None)
    yield
    if report is not None:
        report(name, time.perf_counter() - start)


@functools.lru_cache(maxsize=4)
def _load_vqgan_cached(spec: str, device: str) -> Loaded:
    with _reported(spec):
        loaded = load_vqgan(spec, load_registry())
        loaded.module.to(device)
    return loaded


@functools.lru_cache(maxsize=8)
def _load_clip_cached(spec: str, device: str) -> Loaded:
    with _reported(spec):
        loaded = load_clip(spec, load_registry())
        loaded.module.to(device)
    return loaded


def load_models(config: RunConfig, on_load: LoadReport | None = None) -> tuple[Models, list[Loaded]]:
    """Load (or reuse, within this process) the run's VQGAN and CLIP models.

    ``on_load`` hears about each model actually loaded (not those reused): its name when loading
    starts, then its name and the seconds it took.
    """
    device = pick_device(config.device)
    token = _on_load.set(on_load)
    try:
        vqgan = _load_vqgan_cached(config.vqgan, str(device))
        clips = [_load_clip_cached(spec, str(device)) for spec in config.clip]
    finally:
        _on_load.reset(token)
    return Models(vqgan.module, [c.module for c in clips], device), [vqgan, *clips]


def _inputs(config: RunConfig) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    init_image = read_image(config.init_image, "init image") if config.init == "image" else None
    images = {p.source: read_image(p.source, "image prompt") for p in parse_image_prompts(config.image_prompts)}
    return init_image, images


@dataclass
class Prepared:
    """Everything a run needs, checked before anything is written."""

    config: RunConfig  # validated, seed drawn
    models: Models
    loaded: list[Loaded]
    init_image: torch.Tensor | None
    prompt_images: dict[str, torch.Tensor]
    inputs: dict[str, str]  # sha256 of each input image


def prepare(config: RunConfig, on_load: LoadReport | None = None) -> Prepared:
    """Validate ``config``, read its input images, load the models and check memory; no disk writes."""
    if config.seed is None:
        config = replace(config, seed=secrets.randbelow(2**31))
    validate(config)
    init_image, prompt_images = _inputs(config)
    inputs = input_hashes(config)
    models, loaded = load_models(config, on_load)
    check_memory(config, models)
    return Prepared(config, models, loaded, init_image, prompt_images, inputs)


def run(config: RunConfig, output_dir: Path | None = None, *, overwrite: bool = False,
        on_step: Callable[[Step], None] | None = None, resume: dict | None = None,
        on_load: LoadReport | None = None) -> RunResult:
    """Generate one image for ``config`` and write every output into ``output_dir``.

    Everything is checked before the output folder is created or changed. Ctrl-C
    (KeyboardInterrupt) stops early but keeps the work: the image and ``state.pt`` of the last
    whole step, the frames and the GIF are written, and ``RunResult.completed`` is False.
    From its first change to the end the run holds the folder (:func:`pixgen.folder_lock.hold_folder`):
    another writer of it meanwhile gets OutputBusy and touches nothing.
    """
    job = prepare(config, on_load)
    output_dir, image_path = run_location(output_dir if output_dir is not None else default_output_dir(job.config))
    if resume is None:
        claim_image_path(image_path, output_dir, overwrite)  # and again once the folder is held
    with hold_folder(output_dir) as made:
        try:
            return _run_held(job, output_dir, image_path, overwrite, on_step, resume, made)
        except OutputError as err:
            if type(err) is not OutputError or not (output_dir / CONFIG_NAME).is_file():
                raise
            # a write failed (a full disk) once the run was under way: what it saved resumes
            raise OutputError(f"{err}; once that is fixed, continue with: pixgen resume {output_dir}") from None


def _run_held(job: Prepared, output_dir: Path, image_path: Path, overwrite: bool,
              on_step: Callable[[Step], None] | None, resume: dict | None, made: bool) -> RunResult:
    """:func:`run` in a folder this process holds (``made``: holding it created it)."""
    config = job.config
    if resume is not None:
        check_state(resume, config, job.models, output_dir / STATE_NAME)
        created = False
    else:
        claim_image_path(image_path, output_dir, overwrite)
        created = claim_output_dir(output_dir, overwrite) or made

    # frames past the checkpoint (a kill between a frame and its state) are made again, not kept twice
    frames = [f for f in sorted((output_dir / FRAMES_DIR).glob("step-*.png"))
              if resume and int(f.stem.removeprefix("step-")) <= resume["step"]]
    last: Step | None = None
    completed = False
    config_text, config_written = config_to_yaml(config), False
    try:
        for last in generate(config, job.models, init_image=job.init_image, prompt_images=job.prompt_images,
                             resume=resume):
            if on_step is not None:
                on_step(last)
            if _is_save_point(config, last):
                _save_frame(config, output_dir, last, frames)
                # the config first: a kill between the two leaves an older state beside it, still resumable
                if not config_written:  # the same text all run long: once is enough
                    atomic_write_text(output_dir / CONFIG_NAME, config_text)
                    config_written = True
                save_state(output_dir / STATE_NAME, last, config)
        completed = True
    except KeyboardInterrupt:
        if last is None:
            _forget_unstarted(output_dir, created)
            raise
        # stopped between the step and its frame: the resumed run starts after it, so write it now
        _save_frame(config, output_dir, last, frames)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        if last is not None:
            save_state(output_dir / STATE_NAME, last, config)
        else:
            _forget_unstarted(output_dir, created)
        raise OutOfMemory(out_of_memory_message(config, job.models.device)) from None
    return _finish(job, output_dir, image_path, last, frames, completed, config_text)


def _is_save_point(config: RunConfig, step: Step) -> bool:
    """Steps after which a resume checkpoint is written: the first, then every save_every (or 10) steps."""
    return step.step < config.steps and (step.step == 1 or step.step % (config.save_every or STATE_EVERY) == 0)


def _save_frame(config: RunConfig, output_dir: Path, step: Step, frames: list[Path]) -> None:
    """Write ``step``'s progress frame if it is one and not yet written."""
    if not (_is_save_point(config, step) and config.save_every and step.step % config.save_every == 0):
        return
    frame = output_dir / FRAMES_DIR / f"step-{step.step:05d}.png"
    if frame not in frames:
        save_png(frame, to_pixels(step.image()))
        frames.append(frame)  # only once written: a Ctrl-C inside save_png leaves no file


def _forget_unstarted(output_dir: Path, created: bool) -> None:
    """A run stopped before its first step leaves no trace: remove the folder if this run made it."""
    if created and output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()


def _finish(job: Prepared, output_dir: Path, image_path: Path, last: Step, frames: list[Path],
            completed: bool, config_text: str) -> RunResult:
    config = job.config
    pixels = to_pixels(last.image())
    text = png_text(config, job.loaded, last.step, str(job.models.device), job.inputs)
    save_image(image_path, pixels, text)
    gif_path = None
    if config.gif:
        gif_path = output_dir / GIF_NAME
        gif_frames = [read_pixels(path, "progress frame", hint="delete it, then pixgen resume the run")
                      for path in frames] + [pixels]
        save_gif(gif_path, gif_frames, config.gif_fps)
    # the state last: if a write above fails, the state of the last checkpoint stays and a resume completes the run
    atomic_write_text(output_dir / CONFIG_NAME, config_text)  # before the state, as at every checkpoint
    save_state(output_dir / STATE_NAME, last, config)
    return RunResult(output_dir, image_path, config.seed, last.step, completed, frames, gif_path, last.loss,
                     prompts_read_as(config, job.loaded))


IDENTITY_KEYS = ("seed", "prompt", "negative_prompts", "image_prompts", "noise_prompts", "size", "vqgan", "clip",
                 "init", "init_image")


def run_identity(config: RunConfig) -> str:
    """What a state file records of the run that wrote it: a hash of the settings that make it that
    run (seed, prompts, size, models, start). Not the step count (a resume may raise it), the device
    (a batch worker may run it elsewhere), nor settings a later pixgen may add."""
    values = {key: getattr(config, key) for key in IDENTITY_KEYS}
    recipe = json.dumps({k: v if v is None or isinstance(v, (str, int)) else list(v) for k, v in values.items()},
                        sort_keys=True)
    return hashlib.sha256(recipe.encode("utf-8")).hexdigest()[:16]


def save_state(path: Path, step: Step, config: RunConfig) -> None:
    """Write the resume checkpoint of ``config``'s run (tensors, numbers and its identity only,
    readable with weights_only=True)."""
    with atomic_path(path) as temp:
        torch.save({**step.checkpoint(), "run": run_identity(config)}, temp)


def read_state(path: Path) -> dict:
    """Read a resume checkpoint without unpickling anything but tensors; refuse anything else in one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except Exception:  # torch raises many types for truncated, planted or foreign files
        raise InputError(f"{path} is damaged or is not a pixgen state file; it cannot be resumed "
                         "(start the run again, or resume an earlier copy)") from None
    ok = (isinstance(state, dict) and isinstance(state.get("step"), int) and state["step"] >= 1
          and isinstance(state.get("z"), torch.Tensor) and state["z"].is_floating_point() and state["z"].dim() == 4
          and isinstance(state.get("optimizer"), dict) and isinstance(state.get("generator"), torch.Tensor)
          and state["generator"].dtype == torch.uint8 and isinstance(state.get("run", ""), str))
    if not ok:
        raise InputError(f"{path} is not a pixgen state file (missing or mistyped step, z, optimizer, generator)")
    return state


def check_state(state: dict, config: RunConfig, models: Models, path: Path) -> None:
    """Refuse a checkpoint of another run (one that records another config), or one that does not fit
    this run's latent grid or optimiser. States written before pixgen recorded their run have only
    the second check."""
    identity = run_identity(config)
    if state.get("run", identity) != identity:
        raise InputError(f"{path} belongs to another run (it records another config than this run's "
                         f"{CONFIG_NAME}); it cannot be resumed here")
    expected = (1, models.vqgan.config.embed_dim, *latent_grid(config.size, models.vqgan))
    if tuple(state["z"].shape) != expected:
        raise InputError(f"{path} holds latents of shape {tuple(state['z'].shape)}, but this run's "
                         f"size and VQGAN need {expected}")
    if not finite(state["z"]):
        raise InputError(f"{path} holds latents that are not finite numbers")
    try:
        probe = torch.zeros(expected, requires_grad=True)
        OPTIMIZERS[config.optimizer]([probe], config.lr).load_state_dict(state["optimizer"])
        torch.Generator().set_state(state["generator"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError):
        raise InputError(f"{path} does not hold a {config.optimizer} optimiser and RNG state "
                         "for this run") from None


def finite(tensor: torch.Tensor) -> bool:
    """Whether every element of ``tensor`` is a finite number."""
    return bool(torch.isfinite(tensor).all())


def read_run_config(output_dir: Path) -> RunConfig:
    """The config a run folder's ``run.yaml`` records, validated like any other config."""
    path = Path(output_dir) / CONFIG_NAME
    return config_from_mapping(read_yaml_mapping(path, "run config"), f"run config {path}")


def resume_run(output: Path, *, steps: int | None = None, on_step: Callable[[Step], None] | None = None,
               on_load: LoadReport | None = None) -> RunResult:
    """Continue an interrupted run from its ``state.pt``; ``steps`` may raise the total.

    ``output`` is what ``-o`` named: the run folder, or the image file (``cat.png``) whose files
    are in ``cat.png.pixgen``.
    """
    output_dir, image_path = run_location(output)
    config_path, state_path = output_dir / CONFIG_NAME, output_dir / STATE_NAME
    if not config_path.is_file():
        raise InputError(f"{output_dir} is not a pixgen run folder (no {CONFIG_NAME})")
    config = read_run_config(output_dir)
    if config.seed is None:
        raise InputError(f"{config_path} records no seed, so the run cannot be resumed exactly")
    if steps is not None:
        config = replace(config, steps=steps)
        validate(config)
    target = output_dir if image_path == output_dir / IMAGE_NAME else image_path
    with hold_folder(output_dir):  # the state read is the one continued: no other writer meanwhile
        if not state_path.is_file():  # killed before its first checkpoint: the seed makes a fresh start exact
            return run(config, target, overwrite=True, on_step=on_step, on_load=on_load)
        state = read_state(state_path)
        if state["step"] >= config.steps:
            raise InputError(f"{output_dir} already ran {state['step']} of {config.steps} steps; "
                             "pass --steps with a larger total to continue")
        return run(config, target, on_step=on_step, resume=state, on_load=on_load)
