"""Animations: every frame a short engine run that starts from the previous frame, moved.

Frame 0 is an ordinary run (``first_frame_steps`` steps from the config's init). Frame t > 0:
take frame t-1's image, zoom/rotate/pan it (one affine resample, :mod:`pixgen.animation.motion`), encode it
with the VQGAN encoder (init "image"), run ``steps_per_frame`` engine steps towards frame t's
prompts (:mod:`pixgen.animation.schedules`), decode. Frame t is seeded with ``seed + t``, so a frame depends
only on the previous frame's latents: that is what makes resuming exact.

``smooth`` W blends each frame's optimised latents with its starting latents (the previous frame,
moved and encoded): z = W * z_start + (1 - W) * z_optimised, an EMA of z along the motion that
trades prompt pull for less flicker (0: off; 0.3-0.6 is a useful range).

An animation folder holds ``frames/frame-NNNNN.png`` (recipe and frame index in PNG text),
``animation.mp4``, ``animation.gif``, ``run.yaml`` (``config:`` the run config, ``animation:`` the
settings with the full schedule) and ``animation-state.pt`` (frame index, latents, optimiser and
RNG state after the last completed frame; :func:`resume_animation` continues from it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from pixgen.animation import schedules
from pixgen.animation.motion import blend, transform
from pixgen.config import (
    MAX_STEPS,
    RunConfig,
    config_from_mapping,
    config_to_yaml,
    key_hint,
    read_yaml_mapping,
    shown,
)
from pixgen.engine.inits import INIT_METHODS
from pixgen.engine.loop import Models, Step, generate, latent_grid, seed_everything, synth
from pixgen.errors import ConfigError, InputError, OutputExists
from pixgen.fileio import atomic_path, atomic_write_text
from pixgen.folder_lock import hold_folder
from pixgen.pipeline.output import open_image, read_pixels, save_gif, save_png, save_video, to_pixels
from pixgen.pipeline.recipe import png_text, prompts_read_as
from pixgen.pipeline.runner import (
    CONFIG_NAME,
    FRAMES_DIR,
    Prepared,
    default_output_dir,
    prepare,
    run_identity,
)

STATE_NAME = "animation-state.pt"
VIDEO_NAME = "animation.mp4"
GIF_NAME = "animation.gif"
PREVIOUS_FRAME = "previous-frame"  # init_image recorded in a frame's recipe: it started from the frame before
MAX_FRAMES = 100_000  # also of the video, interpolated frames included
MAX_INTERPOLATE = 30


@dataclass
class AnimationSettings:
    """What an animation adds to a run config; same names as the ``pixgen animate`` flags."""

    frames: int | None = None  # number of frames (required)
    steps_per_frame: int = 30  # engine steps of every frame after the first (0: motion only)
    first_frame_steps: int | None = None  # steps of frame 0; None: the config's steps
    zoom: Any = 1.0  # per-frame zoom about the centre (>1 moves content outward), or keyframes
    rotate: Any = 0.0  # per-frame counter-clockwise rotation in degrees, or keyframes
    pan: Any = "0,0"  # per-frame move of the content "dx,dy" in pixels (right, down), or keyframes "0:(dx,dy)"
    fps: float = 12.0  # frames per second of the MP4 and GIF (before interpolation)
    smooth: float = 0.0  # latent EMA weight W in [0, 1): z = W * z_start + (1 - W) * z_optimised
    crossfade: int = 4  # frames over which prompt weights cross-fade at a schedule change (0: jump)
    interpolate: int = 0  # pixel-blended frames inserted between frames in the MP4/GIF
    schedule: Any = field(default_factory=list)  # a story "a ^ b" or a list of {prompt, frames, weight}


SETTING_NAMES = tuple(f.name for f in fields(AnimationSettings))


@dataclass
class Plan:
    """Settings checked and parsed: the schedule made explicit, keyframes ready to sample."""

    settings: AnimationSettings  # with schedule as an explicit list (what run.yaml records)
    segments: list[schedules.Segment]
    zoom: schedules.Keyframes
    rotate: schedules.Keyframes
    pan: schedules.Keyframes

    def prompt(self, frame: int) -> str:
        """Frame ``frame``'s weighted prompts."""
        return schedules.frame_prompt(self.segments, frame, self.settings.crossfade)

    def motion(self, frame: int) -> tuple[float, float, tuple[float, float]]:
        """(zoom, rotate, pan) of the move from frame-1 to ``frame``."""
        pan = schedules.value_at(self.pan, frame)
        return schedules.value_at(self.zoom, frame)[0], schedules.value_at(self.rotate, frame)[0], (pan[0], pan[1])


@dataclass
class FrameDone:
    """Reported to ``on_frame`` after each frame is written."""

    frame: int  # 0-based
    total: int
    path: Path
    prompt: str
    seconds: float


@dataclass
class AnimationResult:
    """What an animation wrote, and how far it got."""

    output_dir: Path
    seed: int
    frames_done: int
    completed: bool  # False when interrupted: continue with resume_animation()
    frame_paths: list[Path]
    video_path: Path | None = None
    gif_path: Path | None = None
    read_as: dict[str, str] = field(default_factory=dict)  # this session's frame prompts restated (bundled models)


def _whole(value: Any, name: str, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        raise ConfigError(f"invalid value {shown(value)} for {name!r}: expected a whole number "
                          f"{f'between {low} and {high}' if high is not None else f'of at least {low}'}")
    return value


def _number(value: Any, name: str, low: float, high: float, low_open: bool, high_open: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        raise ConfigError(f"invalid value {shown(value)} for {name!r}: must be in "
                          f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
    return float(value)


def plan_animation(settings: AnimationSettings) -> Plan:
    """Check every setting and parse the schedules; raises a one-line ConfigError."""
    s = settings
    if s.frames is None:
        raise ConfigError("give the number of frames: --frames N")
    frames = _whole(s.frames, "frames", 1, MAX_FRAMES)
    _whole(s.steps_per_frame, "steps_per_frame", 0, MAX_STEPS)
    if s.first_frame_steps is not None:
        _whole(s.first_frame_steps, "first_frame_steps", 0, MAX_STEPS)
    _number(s.fps, "fps", 0, 100, True, False)
    _number(s.smooth, "smooth", 0, 1, False, True)
    _whole(s.crossfade, "crossfade", 0, MAX_FRAMES)
    _whole(s.interpolate, "interpolate", 0, MAX_INTERPOLATE)
    played = (frames - 1) * (s.interpolate + 1) + 1  # what write_videos holds in memory at once
    if played > MAX_FRAMES:
        raise ConfigError(f"{frames} frames with interpolate {s.interpolate} make {played:,} video frames; "
                          f"the limit is {MAX_FRAMES:,}")
    keyframes = {}
    for name, width in (("zoom", 1), ("rotate", 1), ("pan", 2)):
        keyframes[name] = schedules.parse_keyframes(getattr(s, name), name, width)
        schedules.check_within(keyframes[name], frames, name)
    schedules.check_positive(keyframes["zoom"], "zoom")
    if isinstance(s.schedule, str):
        segments = schedules.parse_story(s.schedule, frames)
    elif not s.schedule:
        raise ConfigError("give a prompt, a story 'a ^ b' or a schedule file")
    else:
        segments = schedules.parse_schedule(s.schedule, frames)
    explicit = [{"prompt": g.prompt, "frames": [g.start, g.end], "weight": schedules.keyframes_to_text(g.weight)}
                for g in segments]
    plan = Plan(replace(s, schedule=explicit), segments, keyframes["zoom"], keyframes["rotate"], keyframes["pan"])
    for frame in range(frames):
        plan.prompt(frame)  # every frame must have a prompt with a non-zero weight
    return plan


def settings_from_mapping(data: dict[str, Any], source: str) -> AnimationSettings:
    """Animation settings from a mapping (a schedule file, run.yaml's ``animation:``); unknown keys fail."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of animation settings")
    unknown = sorted(str(k) for k in data if k not in SETTING_NAMES)
    if unknown:
        raise ConfigError(f"unknown animation setting {shown(unknown[0])} in {source}"
                          f"{key_hint(unknown[0], SETTING_NAMES, 'see Usage in docs/animation.md')}")
    return AnimationSettings(**data)


def animation_settings(source: str | None, schedule_file: Path | None = None, **flags: Any) -> Plan:
    """Layer defaults < schedule file < flags; ``source`` is a prompt, a story or a schedule .yaml file."""
    if source is not None and Path(source).suffix in (".yaml", ".yml"):
        if schedule_file is not None:
            raise ConfigError("give the schedule file once: as PROMPT_OR_SCHEDULE or with --schedule")
        schedule_file, source = Path(source), None
    data: dict[str, Any] = {}
    if schedule_file is not None:
        data = read_yaml_mapping(Path(schedule_file), "schedule file")
        data = data.get("animation", data)  # a run.yaml works too
    data.update({k: v for k, v in flags.items() if v is not None})
    if source is not None:
        if data.get("schedule"):
            raise ConfigError("prompts given twice: as PROMPT_OR_SCHEDULE and in the schedule file")
        data["schedule"] = source
    return plan_animation(settings_from_mapping(data, str(schedule_file or "the command line")))


def frame_config(config: RunConfig, plan: Plan, frame: int) -> RunConfig:
    """The run config of one frame: its prompts, steps and seed; frames after the first start from the last."""
    settings = plan.settings
    if frame == 0:
        steps = config.steps if settings.first_frame_steps is None else settings.first_frame_steps
        return replace(config, prompt=plan.prompt(0), steps=steps)
    return replace(config, prompt=plan.prompt(frame), steps=settings.steps_per_frame,
                   seed=(config.seed + frame) % 2**63, init="image", init_image=PREVIOUS_FRAME)


def initial_latents(config: RunConfig, models: Models, image: torch.Tensor | None) -> torch.Tensor:
    """The latents the engine would start from for ``config`` (same seed, same init method)."""
    generator = seed_everything(config.seed)
    grid = latent_grid(config.size, models.vqgan)
    image = image.to(models.device) if image is not None else None
    return INIT_METHODS[config.init](models.vqgan, grid, generator, image).to(models.device).float()


def render_frame(config: RunConfig, models: Models, image: torch.Tensor | None, smooth: float,
                 prompt_images: dict[str, torch.Tensor], on_step: Callable[[Step], None] | None
                 ) -> tuple[torch.Tensor, Step | None]:
    """One frame: ``config.steps`` engine steps from ``image`` (or the config's init); its latents and last step."""
    last = None
    for last in generate(config, models, init_image=image, prompt_images=prompt_images):
        if on_step is not None:
            on_step(last)
    if last is None:
        return initial_latents(config, models, image), None
    z = last.z
    if smooth > 0 and image is not None:
        z = blend(z, initial_latents(config, models, image), smooth)
    return z, last


def claim_animation_dir(path: Path, overwrite: bool) -> None:
    """Create the output folder; refuse one holding pixgen outputs unless ``overwrite`` (then clear old frames)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExists(f"output {path} exists and is not a folder")
    taken = [n for n in (CONFIG_NAME, FRAMES_DIR, STATE_NAME, VIDEO_NAME, GIF_NAME, "image.png", "state.pt")
             if (path / n).exists()]
    if taken and not overwrite:
        raise OutputExists(f"output folder {path} already holds {taken[0]}; "
                           "pass --overwrite to replace it, or choose another --output")
    if overwrite:
        for stale in [*(path / FRAMES_DIR).glob("frame-*.png"), path / STATE_NAME]:
            stale.unlink(missing_ok=True)
    try:
        (path / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputExists(f"cannot create output folder {path}: {err.strerror}") from None


def run_yaml(config: RunConfig, plan: Plan) -> str:
    """run.yaml of an animation: the run config and the animation settings with the full schedule."""
    return yaml.safe_dump({"config": yaml.safe_load(config_to_yaml(config)),
                           "animation": asdict(plan.settings)}, sort_keys=False)


def frame_path(output_dir: Path, frame: int) -> Path:
    """Where frame ``frame`` is written."""
    return Path(output_dir) / FRAMES_DIR / f"frame-{frame:05d}.png"


def animation_identity(config: RunConfig, plan: Plan) -> str:
    """What an animation's state records of the animation that wrote it: its run (see
    :func:`~pixgen.pipeline.runner.run_identity`) and its whole schedule."""
    schedule = json.dumps(asdict(plan.settings), sort_keys=True, default=str)
    return hashlib.sha256(f"{run_identity(config)} {schedule}".encode()).hexdigest()[:16]


def save_animation_state(path: Path, frame: int, z: torch.Tensor, last: Step | None, identity: str) -> None:
    """Write the resume state after ``frame`` (tensors, numbers and the animation's identity;
    weights_only-loadable), atomically."""
    state = {"frame": frame, "z": z.detach().cpu().clone(), **(last.state if last is not None else {}),
             "run": identity}
    with atomic_path(path) as temp:
        torch.save(state, temp)


def write_videos(output_dir: Path, paths: list[Path], settings: AnimationSettings) -> tuple[Path, Path]:
    """Write animation.mp4 and animation.gif (atomically) from the frame PNGs, pixel-interpolated."""
    frames = [read_pixels(p, "animation frame") for p in paths]
    steps = settings.interpolate + 1
    played = []
    for a, b in zip(frames, frames[1:], strict=False):
        played += [np.rint(blend(a.astype(np.float32), b.astype(np.float32), k / steps)).astype(np.uint8)
                   for k in range(steps)]
    played.append(frames[-1])
    fps = settings.fps * steps
    save_video(output_dir / VIDEO_NAME, played, fps)
    save_gif(output_dir / GIF_NAME, played, min(fps, 100.0))
    return output_dir / VIDEO_NAME, output_dir / GIF_NAME


def animate(config: RunConfig, plan: Plan, output_dir: Path | None = None, *, overwrite: bool = False,
            on_frame: Callable[[FrameDone], None] | None = None, on_step: Callable[[Step], None] | None = None,
            resume: dict[str, Any] | None = None) -> AnimationResult:
    """Render every frame of ``plan`` into ``output_dir``, then the MP4 and GIF.

    Ctrl-C (KeyboardInterrupt) keeps every completed frame and the state to resume from;
    ``AnimationResult.completed`` is then False. ``resume`` is a loaded animation-state.pt.
    From its first change to the end it holds the folder (:func:`pixgen.folder_lock.hold_folder`):
    another writer of it meanwhile gets OutputBusy and touches nothing.
    """
    job = prepare(config)  # validates, draws the seed, reads inputs, loads the models once; no disk writes
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(job.config)
    with hold_folder(output_dir):
        return _animate_held(job, plan, output_dir, overwrite, on_frame, on_step, resume)


def _animate_held(job: Prepared, plan: Plan, output_dir: Path, overwrite: bool,
                  on_frame: Callable[[FrameDone], None] | None, on_step: Callable[[Step], None] | None,
                  resume: dict[str, Any] | None) -> AnimationResult:
    """:func:`animate` in a folder this process holds."""
    config, models = job.config, job.models
    identity = animation_identity(config, plan)
    if resume is None:
        claim_animation_dir(output_dir, overwrite)
    elif resume.get("run", identity) != identity:  # states written before pixgen recorded it: shapes only
        raise InputError(f"{output_dir / STATE_NAME} belongs to another animation (it records other settings "
                         f"than {output_dir / CONFIG_NAME}); it cannot be resumed here")
    elif "z" in resume:
        expected = (1, models.vqgan.config.embed_dim, *latent_grid(config.size, models.vqgan))
        if tuple(resume["z"].shape) != expected:
            raise InputError(f"{output_dir / STATE_NAME} holds latents of shape {tuple(resume['z'].shape)}, "
                             f"but this animation's size and VQGAN need {expected}")
    atomic_write_text(output_dir / CONFIG_NAME, run_yaml(config, plan))

    total, start = plan.settings.frames, (resume or {}).get("frame", -1) + 1
    paths = [frame_path(output_dir, f) for f in range(start)]
    z = resume["z"].to(models.device) if start > 0 else None
    read_as: dict[str, str] = {}
    try:
        for frame in range(start, total):
            began = time.perf_counter()
            frame_cfg = frame_config(config, plan, frame)
            image = job.init_image
            if z is not None:
                with torch.no_grad():
                    image = transform(synth(z, models.vqgan).float(), *plan.motion(frame))
            smooth = plan.settings.smooth if frame else 0.0
            z, last = render_frame(frame_cfg, models, image, smooth, job.prompt_images, on_step)
            with torch.no_grad():
                pixels = to_pixels(synth(z, models.vqgan))
            text = {**png_text(frame_cfg, job.loaded, frame_cfg.steps, str(models.device), job.inputs),
                    "frame": str(frame), "frames": str(total)}
            read_as |= prompts_read_as(frame_cfg, job.loaded)
            paths.append(frame_path(output_dir, frame))
            save_png(paths[-1], pixels, text)
            save_animation_state(output_dir / STATE_NAME, frame, z, last, identity)
            if on_frame is not None:
                on_frame(FrameDone(frame, total, paths[-1], frame_cfg.prompt, time.perf_counter() - began))
        video, gif = write_videos(output_dir, paths, plan.settings)
    except KeyboardInterrupt:  # completed frames and their state are kept; resume redoes the rest
        return AnimationResult(output_dir, config.seed, len(paths), False, paths, read_as=read_as)
    return AnimationResult(output_dir, config.seed, total, True, paths, video, gif, read_as)


def is_animation_folder(folder: Path) -> bool:
    """True when ``folder`` holds an animation (its run.yaml has an ``animation:`` section)."""
    path = Path(folder) / CONFIG_NAME
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "animation" in data


def resume_animation(folder: Path, *, on_frame: Callable[[FrameDone], None] | None = None,
                     on_step: Callable[[Step], None] | None = None) -> AnimationResult:
    """Continue an interrupted animation from its last completed frame (a finished one: rewrite the videos)."""
    folder = Path(folder)
    if not is_animation_folder(folder):
        raise InputError(f"{folder} is not a pixgen animation folder (no {CONFIG_NAME} with an animation section)")
    data = yaml.safe_load((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    config = config_from_mapping(data.get("config"), f"{folder / CONFIG_NAME} config")
    plan = plan_animation(settings_from_mapping(data["animation"], f"{folder / CONFIG_NAME} animation"))
    state_path = folder / STATE_NAME
    with hold_folder(folder):  # the state read is the one continued: no other writer meanwhile
        state = read_animation_state(state_path) if state_path.is_file() else {}
        if state.get("frame", -1) >= plan.settings.frames:
            raise InputError(f"{state_path} is past the last frame of {folder}'s schedule")
        check_frames(folder, state.get("frame", -1) + 1)
        return animate(config, plan, folder, on_frame=on_frame, on_step=on_step, resume=state)


def check_frames(folder: Path, count: int) -> None:
    """Refuse to resume unless the first ``count`` frames are on disk and readable: the video is made
    of them, and a frame cannot be made again without the ones before it."""
    for frame in range(count):
        path = frame_path(folder, frame)
        if not path.is_file():
            raise InputError(f"animation frame {path} is missing, so {folder} cannot be resumed; render it again with "
                             "pixgen animate … --overwrite")
        open_image(path, "animation frame").close()  # decoded whole: one line for a truncated, foreign or huge file


def read_animation_state(path: Path) -> dict[str, Any]:
    """Read animation-state.pt (weights_only: tensors and numbers only); refuse anything else in one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for truncated or foreign files
        raise InputError(f"{path} is damaged or is not a pixgen animation state; it cannot be resumed") from None
    ok = (isinstance(state, dict) and isinstance(state.get("frame"), int) and state["frame"] >= 0
          and isinstance(state.get("z"), torch.Tensor) and state["z"].is_floating_point() and state["z"].dim() == 4
          and bool(torch.isfinite(state["z"]).all()) and isinstance(state.get("run", ""), str))
    if not ok:
        raise InputError(f"{path} is not a pixgen animation state (missing, mistyped or non-finite frame or z)")
    return state
