"""Writing results: PNGs with their recipe in text chunks, frames, and progress GIFs, atomically."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from pixgen.errors import InputError, OutputError
from pixgen.fileio import atomic_path, write_failure


def to_pixels(image) -> np.ndarray:
    """A (1, 3, H, W) or (3, H, W) tensor in [0, 1] -> (H, W, 3) uint8 array."""
    array = image.detach().float().cpu().numpy()
    if array.ndim == 4:
        array = array[0]
    return np.clip(np.rint(array.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)


def preview_bytes(image, side: int = 256) -> tuple[bytes, str]:
    """A (1, 3, H, W) image in [0, 1] as small WebP bytes (PNG where Pillow lacks WebP) and their media type,
    at most ``side`` pixels on its longer side: what a web page shows while a job runs."""
    from PIL import features

    picture = Image.fromarray(to_pixels(image))
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    if features.check("webp"):
        picture.save(buffer, format="WEBP", quality=80)
        return buffer.getvalue(), "image/webp"
    picture.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


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


# The most pixels pixgen decodes from one image file (Pillow's default limit, set here explicitly): a
# header that claims more is refused before anything is decoded, wherever pixgen reads an image.
MAX_IMAGE_PIXELS = 89_478_485
# What Pillow raises for a file that is not an image it can decode whole: foreign, truncated, damaged.
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)


def open_image(path: Path | str, what: str, hint: str | None = None, kind: str = "image",
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read the image file ``path`` whole (pixels and text chunks); a missing, foreign, truncated,
    damaged or oversized file (over ``max_pixels``, checked before decoding) is one InputError naming
    it as ``what`` (e.g. "init image"; "": the path alone), that it is "not a readable ``kind``", and
    ``hint`` (what to do)."""
    name = f"{what} {path}" if what else str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below says it in one line
            image = Image.open(path)
            try:
                width, height = image.size
                if width * height > max_pixels:
                    raise InputError(f"{name} is too large to read safely ({width}x{height} pixels, over "
                                     f"{max_pixels:,}); downscale it first")
                image.load()
            except BaseException:
                image.close()
                raise
    except FileNotFoundError:
        raise InputError(f"{name} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{name} is a folder, not an image") from None
    except PermissionError as err:
        raise InputError(f"{name} cannot be read: {err.strerror}") from None
    except Image.DecompressionBombError:  # Pillow's own limit, twice its default: refused before our check
        raise InputError(f"{name} is too large to read safely (over {MAX_IMAGE_PIXELS:,} pixels); "
                         "downscale it first") from None
    except UNREADABLE:
        raise InputError(f"{name} is not a readable {kind}" + (f"; {hint}" if hint else "")) from None
    return image


def read_pixels(path: Path | str, what: str, hint: str | None = None) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB pixels; one-line InputError as :func:`open_image`."""
    with open_image(path, what, hint) as image:
        return np.asarray(image.convert("RGB"))


def read_user_comment(path: Path) -> str | None:
    """The EXIF UserComment of a JPEG/WebP (the ``parameters`` text), decoded."""
    with open_image(path, "image") as image:
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
    with open_image(path, "image") as image:
        return dict(getattr(image, "text", {}))


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
    exe = ffmpeg_binary()
    height, width = frames[0].shape[:2]
    # yuv420p needs even sides; pad by repeating the last row/column.
    padded = [np.pad(f, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge") for f in frames]
    with atomic_path(path) as temp:
        try:
            iio.imwrite(temp, np.stack(padded), extension=Path(path).suffix.lower(), fps=fps, codec=codec,
                        macro_block_size=1, ffmpeg_log_level="error")  # ffmpeg's errors, not its warnings
            problem = video_problem(exe, temp, len(padded))
        except (RuntimeError, OSError) as err:  # imageio reports a dead ffmpeg as a broken pipe
            problem = str(err).splitlines()[0] if str(err) else type(err).__name__
            fault = write_failure(path, err, temp)
        else:
            fault = write_failure(path, RuntimeError(problem), temp) if problem else None
        if problem:  # a failed write (full disk, size limit) says so; anything else is ffmpeg's
            raise fault or OutputError(f"ffmpeg could not encode {path}: {problem}")


def video_problem(exe: str, path: Path, frames: int) -> str | None:
    """What is wrong with the video ffmpeg wrote at ``path`` (unreadable, or not ``frames`` frames), or None.

    imageio does not look at ffmpeg's exit status, so a video cut short (full disk, file-size
    limit, ffmpeg killed) would otherwise pass for a whole one. This reads the packets back
    (``-c copy``: nothing is decoded) and counts them.
    """
    command = [exe, "-hide_banner", "-nostdin", "-v", "error", "-stats", "-i", str(path), "-map", "0:v:0",
               "-c", "copy", "-f", "null", "-"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"the written video could not be checked ({err})"
    counts = re.findall(r"frame=\s*(\d+)", done.stderr)
    if done.returncode != 0 or not counts:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip() and "frame=" not in line]
        return "the written video is unreadable" + (f" ({lines[-1][:160]})" if lines else "")
    if int(counts[-1]) != frames:
        return f"the written video holds {counts[-1]} of {frames} frames"
    return None
