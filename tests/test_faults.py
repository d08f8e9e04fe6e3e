"""Faults end in one line, and a re-run completes (issue #24, round two).

Full disks are real here, not mocked: ``pixgen`` runs in a subprocess whose file-size limit
(RLIMIT_FSIZE, SIGXFSZ ignored) makes every write past N bytes fail with EFBIG, N chosen so the
failure lands at the write under test. The re-run after the fault (in this process, without
the limit) must complete. Bombs (a PNG header claiming 10^10 pixels), truncated and foreign
images, and malformed judge files are read wherever pixgen reads them.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from pixgen.cli import cli
from pixgen.errors import CheckpointError, InputError, OutputError

ROOT = Path(__file__).resolve().parents[1]
STATE_FITS = 10_000  # run.yaml, frames (~3 kB), the gallery fit; state.pt (~33 kB) does not


# --- helpers ---------------------------------------------------------------------------------------

def pixgen_limited(limit: int, *args) -> subprocess.CompletedProcess:
    """``python -m pixgen ARGS`` where every write past ``limit`` bytes of a file fails with EFBIG."""
    def limit_writes() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return subprocess.run([sys.executable, "-m", "pixgen", *(str(a) for a in args)], preexec_fn=limit_writes,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)


def assert_full(proc: subprocess.CompletedProcess, path: Path) -> None:
    """Exit 1, and stderr is one line that names ``path`` and the size limit; no traceback anywhere."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot write {path}: File too large"), output
    assert "file-size limit" in lines[0] and "what was saved before is kept" in lines[0]


def no_temps(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *pieces: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("Error: "), result.output
    for piece in pieces:
        assert piece in line, line
    return line


def bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A 4x4 PNG whose header (IHDR) claims ``width`` x ``height`` pixels, with a correct CRC."""
    Image.new("RGB", (4, 4), "red").save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def truncated(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:200])
    return path


def garbage(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    return path


BAD_IMAGES = {"bomb": (bomb, "too large to read safely"), "truncated": (truncated, "not a readable image"),
              "garbage": (garbage, "not a readable image")}


def fake_run_folder(folder: Path, frames: int = 3) -> Path:
    """A run folder's frames and image.png, noise (about 3 kB each), as pixgen export reads them."""
    rng = np.random.default_rng(1)
    (folder / "frames").mkdir(parents=True)
    for n in range(frames):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "frames" / f"step-{n:05d}.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "image.png")
    return folder


def write_manifest(path: Path, tiny_preset: Path) -> Path:
    path.write_text(yaml.safe_dump({"defaults": {"preset": str(tiny_preset), "steps": 4},
                                    "jobs": [{"name": "one", "prompt": "a red circle", "seed": 1}]}))
    return path


# --- a full disk at each write: one line, earlier files kept, the re-run completes -----------------

def test_full_disk_at_a_run_checkpoint_then_resume_completes(tmp_path, tiny_preset):
    out = tmp_path / "out"
    proc = pixgen_limited(STATE_FITS, "run", "a red circle", "--preset", tiny_preset, "-o", out, "-q", "--seed", "3")
    assert_full(proc, out / "state.pt")
    assert not (out / "state.pt").exists() and (out / "run.yaml").is_file()
    no_temps(out)
    result = invoke("resume", out, "-q")
    assert result.exit_code == 0, result.output
    assert (out / "image.png").is_file() and torch.load(out / "state.pt", weights_only=True)["step"] == 6


def test_full_disk_at_the_progress_gif_keeps_the_image_and_resume_writes_it(tmp_path, tiny_preset):
    # 24 steps, a frame each: the GIF (~48 kB) is the only file over 40 kB (state.pt ~33 kB)
    out = tmp_path / "out"
    proc = pixgen_limited(40_000, "run", "a red circle", "--preset", tiny_preset, "-o", out, "-q", "--seed", "3",
                          "--steps", "24", "--save-every", "1", "--gif")
    assert_full(proc, out / "progress.gif")
    assert (out / "image.png").is_file() and not (out / "progress.gif").exists()
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 23  # the last checkpoint: resumable
    no_temps(out)
    result = invoke("resume", out, "-q")
    assert result.exit_code == 0, result.output
    with Image.open(out / "progress.gif") as gif:
        assert gif.n_frames == 24  # 23 progress frames and the image
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 24


def test_full_disk_during_a_resume_keeps_the_earlier_state(tmp_path, tiny_preset):
    out = tmp_path / "out"
    assert invoke("run", "a red circle", "--preset", tiny_preset, "-o", out, "-q", "--seed", "3").exit_code == 0
    proc = pixgen_limited(STATE_FITS, "resume", out, "--steps", "10", "-q")
    assert_full(proc, out / "state.pt")
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 6
    no_temps(out)
    result = invoke("resume", out, "--steps", "10", "-q")
    assert result.exit_code == 0, result.output
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 10


def test_full_disk_in_an_animation_then_resume_completes(tmp_path, tiny_preset):
    out = tmp_path / "anim"
    proc = pixgen_limited(STATE_FITS, "animate", "a red circle", "--frames", "3", "--steps-per-frame", "1",
                          "--steps", "2", "--preset", tiny_preset, "-o", out, "-q", "--seed", "3")
    assert_full(proc, out / "animation-state.pt")
    assert (out / "frames" / "frame-00000.png").is_file()
    no_temps(out)
    result = invoke("resume", out, "-q")
    assert result.exit_code == 0, result.output
    assert (out / "animation.mp4").is_file() and (out / "animation.gif").is_file()
    assert len(list((out / "frames").glob("frame-*.png"))) == 3


@pytest.mark.parametrize("fmt, limit", [("gif", 2_000), ("mp4", 1_000), ("webm", 1_000)])
def test_full_disk_in_export_leaves_no_partial_video(tmp_path, fmt, limit):
    folder = fake_run_folder(tmp_path / "run")
    target = tmp_path / f"video.{fmt}"
    proc = pixgen_limited(limit, "export", folder, "--format", fmt, "-o", target)
    assert_full(proc, target)
    assert not target.exists()  # ffmpeg's cut-short file was not passed off as a video
    no_temps(tmp_path)
    result = invoke("export", folder, "--format", fmt, "-o", target)
    assert result.exit_code == 0, result.output
    assert target.stat().st_size > limit


def test_full_disk_at_a_batch_checkpoint_then_the_batch_completes(tmp_path, tiny_preset):
    manifest, out = write_manifest(tmp_path / "m.yaml", tiny_preset), tmp_path / "batch"
    proc = pixgen_limited(STATE_FITS, "batch", manifest, "-o", out, "-q")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output  # the batch's own summary line
    assert "state.pt: File too large" in output  # the job's failure, in the summary
    result = invoke("batch", manifest, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert "1 of 1 jobs done" in result.output


def test_full_disk_at_the_batch_log_leaves_no_torn_line(tmp_path, tiny_preset):
    manifest, out = write_manifest(tmp_path / "m.yaml", tiny_preset), tmp_path / "batch"
    out.mkdir()
    limit = 60_000  # over every other file of the batch
    old = json.dumps({"event": "note", "folder": "gone", "pad": "x" * 200}) + "\n"
    log = out / "batch.jsonl"
    log.write_text(old * ((limit - 20) // len(old)) + "x" * ((limit - 20) % len(old) - 1) + "\n")
    assert log.stat().st_size == limit - 20  # a record does not fit in what is left
    before = log.read_bytes()
    proc = pixgen_limited(limit, "batch", manifest, "-o", out, "-q")
    assert_full(proc, log)
    assert log.read_bytes() == before  # the half-written record was cut off again
    result = invoke("batch", manifest, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert log.read_bytes().startswith(before) and "1 of 1 jobs done" in result.output


def test_full_disk_at_the_gallery_then_the_batch_completes(tmp_path, tiny_preset):
    manifest, out = write_manifest(tmp_path / "m.yaml", tiny_preset), tmp_path / "batch"
    proc = pixgen_limited(1_000, "batch", manifest, "-o", out, "-q")
    assert_full(proc, out / "contact-sheet.png")
    no_temps(out)
    result = invoke("batch", manifest, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert (out / "contact-sheet.png").is_file() and (out / "index.html").is_file()


def test_a_bug_inside_an_atomic_write_keeps_its_traceback(tmp_path):
    from pixgen.fileio import atomic_path

    with pytest.raises(ZeroDivisionError), atomic_path(tmp_path / "x.bin") as temp:
        temp.write_bytes(b"half")
        raise ZeroDivisionError("a bug, not a full disk")
    assert list(tmp_path.iterdir()) == []


def test_torch_save_failures_are_write_failures_only_with_a_write_marker(tmp_path):
    from pixgen.fileio import write_failure

    temp = tmp_path / "t"
    assert write_failure(tmp_path / "x", RuntimeError("bad tensor"), temp) is None
    fault = write_failure(tmp_path / "x", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected "
                                                       "pos 9920 vs 9812"), temp)
    assert isinstance(fault, OutputError) and str(fault).startswith(f"cannot write {tmp_path / 'x'}: ")


@pytest.mark.parametrize("code, words", [(28, "No space left on device"), (27, "file-size limit (ulimit -f)"),
                                         (122, "Disk quota exceeded")])
def test_no_room_messages_say_why_and_that_saves_are_kept(code, words):
    from pixgen.fileio import write_error

    message = str(write_error(Path("out/state.pt"), OSError(code, os.strerror(code))))
    assert message.startswith("cannot write out/state.pt: ") and words in message
    assert message.endswith("what was saved before is kept")


# --- bombs, truncated and foreign images wherever pixgen reads one ---------------------------------

@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
@pytest.mark.parametrize("flag, what", [("--init-image", "init image"), ("--image-prompt", "image prompt")])
def test_bad_input_images_are_one_line_and_write_nothing(tmp_path, tiny_preset, kind, flag, what):
    make, words = BAD_IMAGES[kind]
    image = make(tmp_path / "in.png")
    result = invoke("run", "a red circle", "--preset", tiny_preset, "-o", tmp_path / "out", "-q", flag, image)
    one_line_error(result, f"{what} {image}", words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_a_bad_recipe_png_is_one_line(tmp_path, kind):
    make, words = BAD_IMAGES[kind]
    recipe = make(tmp_path / "recipe.png")
    line = one_line_error(invoke("run", "--from", recipe, "-o", tmp_path / "out"), str(recipe))
    assert (words if kind == "bomb" else "not a readable PNG") in line


def test_a_bomb_below_pillows_error_limit_is_refused_too(tmp_path):
    from pixgen.pipeline.output import MAX_IMAGE_PIXELS, open_image, read_png_text

    path = bomb(tmp_path / "big.png", 10_000, 10_000)  # over the limit, under twice it (Pillow only warns)
    assert MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match=r"10000x10000 pixels"):
        open_image(path, "image")
    with pytest.raises(InputError, match="too large to read safely"):
        read_png_text(path)


@pytest.mark.parametrize("kind", ["bomb", "truncated"])
def test_a_bad_frame_stops_export_in_one_line_and_a_fixed_one_exports(tmp_path, kind):
    make, words = BAD_IMAGES[kind]
    folder = fake_run_folder(tmp_path / "run")
    frame = make(folder / "frames" / "step-00001.png")
    target = tmp_path / "v.gif"
    one_line_error(invoke("export", folder, "-o", target), f"frame {frame}", words)
    assert not target.exists()
    frame.write_bytes((folder / "frames" / "step-00000.png").read_bytes())
    assert invoke("export", folder, "-o", target).exit_code == 0


def test_a_bomb_frame_in_an_animation_stops_resume_and_export_in_one_line(tmp_path, tiny_preset):
    out = tmp_path / "anim"
    result = invoke("animate", "a red circle", "--frames", "3", "--steps-per-frame", "1", "--steps", "2",
                    "--preset", tiny_preset, "-o", out, "-q", "--seed", "3")
    assert result.exit_code == 0, result.output
    frame = out / "frames" / "frame-00001.png"
    good = frame.read_bytes()
    bomb(frame)
    one_line_error(invoke("resume", out, "-q"), str(frame), "too large to read safely")
    one_line_error(invoke("export", out, "-o", tmp_path / "a.mp4"), str(frame), "too large to read safely")

    from pixgen.evaluation.coherence import read_animation_frames

    with pytest.raises(InputError, match="too large to read safely"):
        read_animation_frames(out)
    frame.write_bytes(good)
    assert invoke("resume", out, "-q").exit_code == 0


def test_a_bomb_tile_in_a_batch_gallery_is_one_line(tmp_path):
    from pixgen.batch.gallery import Card, write_contact_sheet

    (tmp_path / "job").mkdir()
    tile = bomb(tmp_path / "job" / "image.png")
    with pytest.raises(InputError, match=rf"image {tile} is too large to read safely"):
        write_contact_sheet(tmp_path, [Card("job", "job", "a red circle", 1, "tiny", 4, 0.5, True)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]  # no sheet, no temp file


def test_a_truncated_image_in_an_eval_contact_sheet_is_one_line(tmp_path):
    from pixgen.evaluation.fidelity import Verdict, contact_sheet

    (tmp_path / "images").mkdir()
    truncated(tmp_path / "images" / "a.png")
    verdict = Verdict("a red circle", 1, "images/a.png", {"shape": "circle"}, {"shape": "circle"},
                      {"shape": "circle"}, {"shape": "circle"}, 0.1)
    with pytest.raises(InputError, match="not a readable image"):
        contact_sheet(tmp_path, [verdict])


# --- malformed judge files -------------------------------------------------------------------------

def _judge_variant(path: Path, tensors=None, **metadata) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pixgen.packs.shapes.judge import DEFAULT_PATH

    with safe_open(str(DEFAULT_PATH), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = {k: v for k, v in {**meta, **metadata}.items() if v is not None}
    save_file(state if tensors is None else tensors, path, metadata=meta)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _shipped_judge() -> bytes:
    from pixgen.packs.shapes.judge import DEFAULT_PATH

    return DEFAULT_PATH.read_bytes()


# case: (make the file in a folder, given the tiny models; what the one line says)
JUDGE_FILES = {
    "garbage": (lambda tmp, models: garbage(tmp / "j.safetensors"), "is not a readable safetensors file"),
    "empty": (lambda tmp, models: _bytes(tmp / "j.safetensors", b""), "is not a readable safetensors file"),
    "truncated": (lambda tmp, models: _bytes(tmp / "j.safetensors", _shipped_judge()[:5000]),
                  "is not a readable safetensors file"),
    "another model": (lambda tmp, models: models["vqgan_safetensors"], "is not a shapes judge (format None"),
    "judge metadata, other tensors": (lambda tmp, models: _judge_variant(
        tmp / "j.safetensors", tensors={"w": torch.zeros(3)}), "does not hold the tensors of a shapes judge"),
    "wrong shapes": (lambda tmp, models: _judge_variant(tmp / "j.safetensors", config=json.dumps({"width": 16})),
                     "features.0.0.weight is [24, 3, 3, 3], expected [16, 3, 3, 3]"),
    "no config": (lambda tmp, models: _judge_variant(tmp / "j.safetensors", config=None),
                  "its metadata has no readable 'config'"),
    "absurd config": (lambda tmp, models: _judge_variant(tmp / "j.safetensors", config='{"width": 10000000000}'),
                      "width 10000000000"),
}


@pytest.mark.parametrize("case", list(JUDGE_FILES))
def test_a_malformed_judge_file_is_one_checkpoint_error_naming_it(tmp_path, tiny_models, case):
    from pixgen.packs.shapes.judge import load_judge

    make, words = JUDGE_FILES[case]
    path = make(tmp_path, tiny_models)
    with pytest.raises(CheckpointError) as caught:
        load_judge(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message


def test_eval_with_a_garbage_judge_is_one_line(tmp_path, tiny_preset):
    judge = garbage(tmp_path / "judge.safetensors")
    result = invoke("eval", "--preset", tiny_preset, "--judge", judge, "-o", tmp_path / "eval", "-q")
    one_line_error(result, f"{judge} is not a readable safetensors file")
    assert not (tmp_path / "eval").exists()


def test_a_failed_write_mid_run_says_how_to_continue(tmp_path, tiny_preset):
    out = tmp_path / "out"
    proc = pixgen_limited(STATE_FITS, "run", "a red circle", "--preset", tiny_preset, "-o", out, "-q", "--seed", "3")
    assert proc.returncode == 1
    assert f"continue with: pixgen resume {out}" in proc.stderr
    again = invoke("run", "a red circle", "--preset", tiny_preset, "-o", out, "-q", "--seed", "3")
    assert again.exit_code == 1 and "already holds run.yaml" in again.output  # the same command is refused
    assert invoke("resume", out, "-q").exit_code == 0  # the advice works
