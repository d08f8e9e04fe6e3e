"""Re-encode a run's or an animation's frames as MP4, WebM or GIF: ``pixgen export``."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from pixgen.errors import ConfigError, InputError, OutputExists
from pixgen.folder_lock import hold_folder
from pixgen.pipeline.output import read_pixels, save_gif, save_video

FORMATS = ("mp4", "webm", "gif")
FRAMES_DIR = "frames"
RUN_FRAMES = "step-*.png"  # a still run's progress frames, followed by its image.png
ANIMATION_FRAMES = "frame-*.png"  # an animation's frames
IMAGE_NAME = "image.png"


def frame_sources(folder: Path) -> list[Path]:
    """The frames of a run folder (progress frames + final image) or an animation folder, in order."""
    animation = sorted((folder / FRAMES_DIR).glob(ANIMATION_FRAMES))
    if animation:
        return animation
    sources = sorted((folder / FRAMES_DIR).glob(RUN_FRAMES))
    if (folder / IMAGE_NAME).is_file():
        sources.append(folder / IMAGE_NAME)
    return sources


def read_frames(sources: list[Path]) -> list[np.ndarray]:
    """Read frames as (H, W, 3) uint8 arrays; a corrupt or oversized frame or a size change is one line."""
    frames = []
    for source in sources:
        frames.append(read_pixels(source, "frame", hint="delete it or run again"))
        if frames[-1].shape != frames[0].shape:
            raise InputError(f"frame {source} is {frames[-1].shape[1]}x{frames[-1].shape[0]}, but the first "
                             f"frame is {frames[0].shape[1]}x{frames[0].shape[0]}")
    return frames


def export_format(fmt: str | None, path: Path | None) -> str:
    """The format to write: given, or from the output file's suffix; they must agree."""
    suffix = path.suffix.lower().lstrip(".") if path is not None else ""
    if fmt is None:
        fmt = suffix or "mp4"
    if fmt not in FORMATS:
        raise ConfigError(f"cannot export {fmt!r}: choose one of {', '.join(FORMATS)}")
    if path is not None and suffix != fmt:
        raise ConfigError(f"output {path} must end in .{fmt} for --format {fmt}")
    return fmt


def export_animation(folder: Path, fmt: str | None = None, fps: float = 10.0, path: Path | None = None,
                     overwrite: bool = False) -> Path:
    """Write ``folder``'s frames as a video or GIF; return where it went. Checks everything first."""
    folder = Path(folder)
    path = Path(path) if path is not None else None
    fmt = export_format(fmt, path)
    if not (math.isfinite(fps) and 0 < fps <= 100):
        raise ConfigError(f"invalid value {fps!r} for 'fps': must be between 0 and 100")
    sources = frame_sources(folder)
    if not sources:
        raise InputError(f"{folder} holds no frames or {IMAGE_NAME} to export")
    path = path if path is not None else folder / f"progress.{fmt}"
    if path.exists() and (not overwrite or path.is_dir()):
        raise OutputExists(f"{path} exists; pass --overwrite to replace it" if not path.is_dir()
                           else f"{path} is a folder; give a file name")
    # writing into the run's own folder: its one writer meanwhile (a run or resume there is refused)
    holding = hold_folder(folder) if path.resolve().parent == folder.resolve() else contextlib.nullcontext()
    with holding:
        frames = read_frames(sources)
        if fmt == "gif":
            save_gif(path, frames, fps)
        else:
            save_video(path, frames, fps)
    return path
