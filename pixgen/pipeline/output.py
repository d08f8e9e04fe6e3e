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


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
PARAMETERS_KEY = "parameters"  # the text chunk image viewers of the A1111/ComfyUI family read
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def save_png(path: Path, pixels: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Save (H, W, 3) uint8 pixels as a PNG with ``text`` in text chunks, atomically.

    ``parameters`` goes in a plain tEXt chunk when it is Latin-1 (as other tools write it), the
    rest in iTXt (UTF-8).
    """
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        if key == PARAMETERS_KEY and _is_latin1(value):
            info.add_text(key, value)
        else:
            info.add_itxt(key, value)
    with atomic_path(path) as temp:
        Image.fromarray(pixels).save(temp, format="PNG", pnginfo=info)


def save_image(path: Path, pixels: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Save by suffix: PNG with text chunks, or JPEG/WebP with ``parameters`` in EXIF UserComment."""
    fmt = IMAGE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"cannot write image {path}: use a .png, .jpg or .webp file name")
    if fmt == "PNG":
        save_png(path, pixels, text)
        return
    exif = Image.Exif()
    comment = (text or {}).get(PARAMETERS_KEY)
    if comment:
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + comment.encode("utf-16-be")
    with atomic_path(path) as temp:
        Image.fromarray(pixels).save(temp, format=fmt, quality=95, exif=exif)


def read_user_comment(path: Path) -> str | None:
    """The EXIF UserComment of a JPEG/WebP (the ``parameters`` text), decoded."""
    with Image.open(path) as image:
        raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if raw is None:
        return None
    if raw.startswith(b"UNICODE\0"):
        return raw[8:].decode("utf-16-be")
    return raw[8:].decode("ascii", errors="replace")


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


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
