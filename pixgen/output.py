"""Writing results: PNGs with their recipe in text chunks, frames, and progress GIFs, atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from pixgen.errors import InputError, OutputError
from pixgen.fileio import atomic_path


def to_pixels(image) -> np.ndarray:
    """A (1, 3, H, W) or (3, H, W) tensor in [0, 1] -> (H, W, 3) uint8 array."""
    array = image.detach().float().cpu().numpy()
    if array.ndim == 4:
        array = array[0]
    return np.clip(np.rint(array.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)


def save_png(path: Path, pixels: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Save (H, W, 3) uint8 pixels as a PNG with ``text`` in tEXt/iTXt chunks, atomically."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    with atomic_path(path) as temp:
        Image.fromarray(pixels).save(temp, format="PNG", pnginfo=info)


def read_png_text(path: Path) -> dict[str, str]:
    """The text chunks of a PNG (the recipe pixgen stored in it)."""
    with Image.open(path) as image:
        image.load()
        return dict(image.text)


def save_gif(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """Write frames as a looping GIF with imageio, atomically."""
    import imageio.v3 as iio

    with atomic_path(path) as temp:
        iio.imwrite(temp, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)


VIDEO_CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9"}


def ffmpeg_binary() -> str:
    """The ffmpeg that imageio-ffmpeg ships (or IMAGEIO_FFMPEG_EXE); one-line errors when missing."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise InputError("video export needs imageio-ffmpeg: pip install 'pixgen[video]'") from None
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (RuntimeError, OSError):
        exe = None
    if not exe or not (shutil.which(exe) or (os.path.isfile(exe) and os.access(exe, os.X_OK))):
        raise InputError(f"video export needs an ffmpeg binary, and {exe or 'none'} was not found or cannot "
                         "run; reinstall imageio-ffmpeg or set IMAGEIO_FFMPEG_EXE to an ffmpeg")
    return exe


def save_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """Write frames as an H.264 MP4 or VP9 WebM, by ``path``'s suffix (needs imageio-ffmpeg)."""
    import imageio.v3 as iio

    codec = VIDEO_CODECS.get(Path(path).suffix.lower())
    if codec is None:
        raise InputError(f"cannot write video {path}: use a .mp4 or .webm file name")
    ffmpeg_binary()
    height, width = frames[0].shape[:2]
    # yuv420p needs even sides; pad by repeating the last row/column.
    padded = [np.pad(f, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge") for f in frames]
    with atomic_path(path) as temp:
        try:
            iio.imwrite(temp, np.stack(padded), extension=Path(path).suffix.lower(), fps=fps, codec=codec,
                        macro_block_size=1)
        except (RuntimeError, BrokenPipeError) as err:
            raise OutputError(f"ffmpeg could not encode {path}: {str(err).splitlines()[0] if str(err) else err}"
                              ) from None
