"""Bad inputs and faults, as a careless or hostile user meets them: one line, non-zero exit, nothing lost.

Each table row names a command line (``{tiny}`` is the tiny-model preset, ``{case}`` the case's own
folder), a setup that plants files in the case folder, the exit code and a piece of the one-line
message. Every row checks that the output has no traceback, that the error is one line, and that
nothing in the test's whole folder changed apart from what the setup planted.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from pixgen.cli import cli

RUN = ["run", "--preset", "{tiny}", "-o", "{case}/out", "-q"]


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its content."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        snapshot[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return snapshot


# --- setups: each plants files in the case folder --------------------------------------------------

def nothing(case: Path, done_run: Path) -> None:
    pass


def binary_config(case: Path, done_run: Path) -> None:
    Image.new("RGB", (4, 4), "red").save(case / "image.png")


def list_config(case: Path, done_run: Path) -> None:
    (case / "c.yaml").write_text("- steps\n- 3\n")


def broken_yaml(case: Path, done_run: Path) -> None:
    (case / "c.yaml").write_text("steps: [1, 2\n")


def unknown_key(case: Path, done_run: Path) -> None:
    (case / "c.yaml").write_text("stepz: 3\n")


def code_in_preset(case: Path, done_run: Path) -> None:
    (case / "evil.yaml").write_text("steps: !!python/object/apply:os.system ['touch pwned']\n")


def corrupt_image(case: Path, done_run: Path) -> None:
    (case / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")


def bomb_image(case: Path, done_run: Path) -> None:
    # 144 megapixels in a few kB: over Pillow's decompression-bomb limit
    Image.new("1", (12000, 12000)).save(case / "bomb.png", optimize=True)


def image_folder(case: Path, done_run: Path) -> None:
    (case / "folder.png").mkdir()


def good_image(case: Path, done_run: Path) -> None:
    Image.new("RGB", (32, 32), "blue").save(case / "ok.png")


def a_file_at_output(case: Path, done_run: Path) -> None:
    (case / "out").write_text("mine")


def earlier_run(case: Path, done_run: Path) -> None:
    shutil.copytree(done_run, case / "out")


def no_run_yaml(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    (case / "out" / "run.yaml").unlink()


def truncated_state(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    state = case / "out" / "state.pt"
    state.write_bytes(state.read_bytes()[:200])


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def planted_state(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    (case / "out" / "state.pt").write_bytes(pickle.dumps({"step": 1, "z": Payload()}))


def state_of_wrong_shape(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    state = torch.load(case / "out" / "state.pt", weights_only=True)
    state["z"] = torch.zeros(1, 8, 3, 3)
    state["step"] = 2
    torch.save(state, case / "out" / "state.pt")


def state_not_a_dict(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    torch.save([torch.zeros(3)], case / "out" / "state.pt")


def state_with_bad_optimizer(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    state = torch.load(case / "out" / "state.pt", weights_only=True)
    state["optimizer"] = {"state": {}, "param_groups": []}
    state["step"] = 2
    torch.save(state, case / "out" / "state.pt")


def corrupt_run_yaml(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    (case / "out" / "run.yaml").write_text("steps: [\n")


def mistyped_run_yaml(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    data = yaml.safe_load((case / "out" / "run.yaml").read_text())
    data["steps"] = "many"
    (case / "out" / "run.yaml").write_text(yaml.safe_dump(data))


def unknown_key_run_yaml(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    data = yaml.safe_load((case / "out" / "run.yaml").read_text())
    data["colour"] = "red"
    (case / "out" / "run.yaml").write_text(yaml.safe_dump(data))


def run_yaml_not_mapping(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    (case / "out" / "run.yaml").write_text("just text\n")


def corrupt_frame(case: Path, done_run: Path) -> None:
    earlier_run(case, done_run)
    (case / "out" / "frames" / "step-00002.png").write_bytes(b"junk")


def empty_folder(case: Path, done_run: Path) -> None:
    (case / "empty").mkdir()


def garbage_prompts(case: Path, done_run: Path) -> None:
    (case / "prompts.txt").write_text("a red circle on a blue background\nhello world\n")


def pipe_prompt(case: Path, done_run: Path) -> None:
    (case / "prompts.txt").write_text("|\n")


def binary_prompts(case: Path, done_run: Path) -> None:
    (case / "prompts.txt").write_bytes(b"\xff\xfe\x00\x81 not utf-8")


def a_file_at_eval_output(case: Path, done_run: Path) -> None:
    (case / "eval").write_text("mine")


def png_without_recipe(case: Path, done_run: Path) -> None:
    Image.new("RGB", (8, 8)).save(case / "plain.png")


def recipe_with_changed_input(case: Path, done_run: Path) -> None:
    _recipe_with_input(case, done_run)
    Image.new("RGB", (32, 32), "green").save(case / "ok.png")  # changed since the recipe was made


def recipe_with_missing_input(case: Path, done_run: Path) -> None:
    _recipe_with_input(case, done_run)
    (case / "ok.png").unlink()


def _recipe_with_input(case: Path, done_run: Path) -> None:
    good_image(case, done_run)
    result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(done_run.parent / "tiny.yaml"),
                                      "--steps", "1", "--seed", "1", "--init-image", str(case / "ok.png"),
                                      "-o", str(case / "made"), "-q"])
    assert result.exit_code == 0, result.output


CASES = [
    # prompts
    ("pipe-only prompt", ["run", "|", *RUN[1:]], nothing, 2, "holds no text"),
    ("too many colon fields", ["run", "a:1:2:3:4", *RUN[1:]], nothing, 2, "too many ':' fields"),
    ("story separator in a still", ["run", "a red circle ^ a blue square", *RUN[1:]], nothing, 2, "story"),
    ("bare caret", ["run", "^", *RUN[1:]], nothing, 2, "story"),
    ("nan weight", ["run", "a red circle:nan", *RUN[1:]], nothing, 2, "weight must be a finite"),
    ("inf weight", ["run", "a red circle:inf", *RUN[1:]], nothing, 2, "weight must be a finite"),
    ("nan stop", ["run", "a red circle:1:nan", *RUN[1:]], nothing, 2, "stop must be a finite"),
    ("negative stop", ["run", "a red circle:1:-2", *RUN[1:]], nothing, 2, "stop must be a finite"),
    ("zero weight", ["run", "a red circle:0", *RUN[1:]], nothing, 2, "non-zero"),
    ("weight only", ["run", ":2", *RUN[1:]], nothing, 2, "empty prompt"),
    ("no prompt at all", RUN, nothing, 2, "give a text prompt"),
    ("blank prompt", ["run", "   ", *RUN[1:]], nothing, 2, "give a text prompt"),
    # config files and overrides
    ("binary config file", ["run", "x", *RUN[1:], "--config", "{case}/image.png"], binary_config, 2, "not a UTF-8"),
    ("config file is a list", ["run", "x", *RUN[1:], "--config", "{case}/c.yaml"], list_config, 2, "mapping"),
    ("config file broken yaml", ["run", "x", *RUN[1:], "--config", "{case}/c.yaml"], broken_yaml, 2,
     "not valid YAML"),
    ("config file unknown key", ["run", "x", *RUN[1:], "--config", "{case}/c.yaml"], unknown_key, 2,
     "unknown setting 'stepz'"),
    ("set without value sign", ["run", "x", *RUN[1:], "--set", "steps"], nothing, 2, "key=value"),
    ("set wrong type", ["run", "x", *RUN[1:], "--set", "steps=many"], nothing, 2, "'steps'"),
    ("set unknown key", ["run", "x", *RUN[1:], "--set", "colour=red"], nothing, 2, "unknown setting"),
    ("set lr inf", ["run", "x", *RUN[1:], "--set", "lr=.inf"], nothing, 2, "finite"),
    ("set gif_fps nan", ["run", "x", *RUN[1:], "--set", "gif_fps=.nan"], nothing, 2, "finite"),
    ("lr flag inf", ["run", "x", *RUN[1:], "--lr", "inf"], nothing, 2, "not a finite number"),
    ("lr flag negative", ["run", "x", *RUN[1:], "--lr", "-1"], nothing, 2, "must be positive"),
    ("init weight inf", ["run", "x", *RUN[1:], "--init-weight", "inf"], nothing, 2, "not a finite number"),
    ("lr final above lr", ["run", "x", *RUN[1:], "--lr", "0.1", "--lr-final", "1"], nothing, 2, "lr_final"),
    ("absurd size", ["run", "x", *RUN[1:], "--size", "100000x100000"], nothing, 2, "between 8 and 4096"),
    ("tiny size", ["run", "x", *RUN[1:], "--size", "4"], nothing, 2, "between 8 and 4096"),
    ("size garbage", ["run", "x", *RUN[1:], "--size", "big"], nothing, 2, "WIDTHxHEIGHT"),
    ("size three numbers", ["run", "x", *RUN[1:], "--size", "8x8x8"], nothing, 2, "WIDTHxHEIGHT"),
    ("set size one number", ["run", "x", *RUN[1:], "--set", "size=[10]"], nothing, 2, "'size'"),
    ("absurd cut count", ["run", "x", *RUN[1:], "--cut-count", "1000000"], nothing, 2, "between 1 and 256"),
    ("zero cut count", ["run", "x", *RUN[1:], "--cut-count", "0"], nothing, 2, "between 1 and 256"),
    ("absurd steps", ["run", "x", *RUN[1:], "--set", "steps=10000000"], nothing, 2, "between 1 and 100000"),
    ("zero steps", ["run", "x", *RUN[1:], "--steps", "0"], nothing, 2, "--steps"),
    ("negative noise", ["run", "x", *RUN[1:], "--set", "augment_noise=-1"], nothing, 2, "augment_noise"),
    ("negative save_every", ["run", "x", *RUN[1:], "--save-every", "-1"], nothing, 2, "save_every"),
    ("unknown optimizer", ["run", "x", *RUN[1:], "--optimizer", "lion"], nothing, 2, "--optimizer"),
    ("unknown init", ["run", "x", *RUN[1:], "--init", "noise"], nothing, 2, "--init"),
    ("unknown precision", ["run", "x", *RUN[1:], "--precision", "int4"], nothing, 2, "--precision"),
    ("init image with random init", ["run", "x", *RUN[1:], "--init", "random", "--init-image", "{case}/ok.png"],
     good_image, 2, "init_image"),
    ("empty clip list", ["run", "x", *RUN[1:], "--set", "clip=[]"], nothing, 2, "CLIP"),
    # devices
    ("device xpu", ["run", "x", *RUN[1:], "--device", "xpu"], nothing, 2, "expected auto, cpu"),
    ("device meta", ["run", "x", *RUN[1:], "--device", "meta"], nothing, 2, "expected auto, cpu"),
    ("device cpu index", ["run", "x", *RUN[1:], "--device", "cpu:3"], nothing, 2, "expected auto, cpu"),
    ("device garbage", ["run", "x", *RUN[1:], "--device", "cuda:x"], nothing, 2, "expected auto, cpu"),
    # presets
    ("preset path by name", ["run", "x", "--preset", "../../etc/passwd", "-o", "{case}/out"], nothing, 2,
     "a preset is a name"),
    ("unknown preset", ["run", "x", "--preset", "nosuch", "-o", "{case}/out"], nothing, 2, "unknown preset"),
    ("missing preset file", ["run", "x", "--preset", "{case}/gone.yaml", "-o", "{case}/out"], nothing, 2,
     "does not exist"),
    ("preset with code", ["run", "x", "--preset", "{case}/evil.yaml", "-o", "{case}/out"], code_in_preset, 2,
     "not valid YAML"),
    # images
    ("missing init image", ["run", "x", *RUN[1:], "--init-image", "{case}/gone.png"], nothing, 1, "does not exist"),
    ("corrupt init image", ["run", "x", *RUN[1:], "--init-image", "{case}/bad.png"], corrupt_image, 1,
     "not a readable image"),
    ("decompression bomb", ["run", "x", *RUN[1:], "--init-image", "{case}/bomb.png"], bomb_image, 1,
     "too large to read safely"),
    ("image prompt is a folder", ["run", "x", *RUN[1:], "--image-prompt", "{case}/folder.png"], image_folder, 1,
     "is a folder"),
    ("missing image prompt", ["run", "x", *RUN[1:], "--image-prompt", "{case}/gone.png:0.5"], nothing, 1,
     "does not exist"),
    ("image prompt zero weight", ["run", "x", *RUN[1:], "--image-prompt", "{case}/ok.png:0"], good_image, 2,
     "non-zero"),
    # models (more in test_bad_models.py)
    ("unknown vqgan", ["run", "x", *RUN[1:], "--vqgan", "nosuch"], nothing, 1, "unknown vqgan model"),
    ("unknown clip", ["run", "x", *RUN[1:], "--clip", "nosuch"], nothing, 1, "unknown clip model"),
    # outputs
    ("output is a file", ["run", "x", *RUN[1:]], a_file_at_output, 1, "is not a folder"),
    ("output holds a run", ["run", "x", *RUN[1:]], earlier_run, 1, "already holds"),
    ("overwrite with refused prompt", ["run", "a:1:2:3:4", *RUN[1:], "--overwrite"], earlier_run, 2,
     "too many"),
    ("overwrite with missing image", ["run", "x", *RUN[1:], "--overwrite", "--init-image", "{case}/gone.png"],
     earlier_run, 1, "does not exist"),
    # resume
    ("resume without run.yaml", ["resume", "{case}/out"], no_run_yaml, 1, "not a pixgen run folder"),
    ("resume truncated state", ["resume", "{case}/out", "--steps", "9"], truncated_state, 1, "damaged"),
    ("resume planted pickle", ["resume", "{case}/out", "--steps", "9"], planted_state, 1, "damaged"),
    ("resume state of wrong shape", ["resume", "{case}/out"], state_of_wrong_shape, 1, "latents of shape"),
    ("resume state not a dict", ["resume", "{case}/out", "--steps", "9"], state_not_a_dict, 1,
     "not a pixgen state file"),
    ("resume bad optimizer state", ["resume", "{case}/out"], state_with_bad_optimizer, 1, "optimiser"),
    ("resume corrupt run.yaml", ["resume", "{case}/out", "--steps", "9"], corrupt_run_yaml, 2, "not valid YAML"),
    ("resume mistyped run.yaml", ["resume", "{case}/out", "--steps", "9"], mistyped_run_yaml, 2, "'steps'"),
    ("resume unknown key run.yaml", ["resume", "{case}/out", "--steps", "9"], unknown_key_run_yaml, 2,
     "unknown setting 'colour'"),
    ("resume run.yaml not mapping", ["resume", "{case}/out", "--steps", "9"], run_yaml_not_mapping, 2, "mapping"),
    ("resume a finished run", ["resume", "{case}/out"], earlier_run, 1, "already ran"),
    ("resume steps absurd", ["resume", "{case}/out", "--steps", "10000000"], earlier_run, 2, "steps"),
    # export
    ("export fps nan", ["export", "{case}/out", "--fps", "nan"], earlier_run, 2, "--fps"),
    ("export fps zero", ["export", "{case}/out", "--fps", "0"], earlier_run, 2, "--fps"),
    ("export suffix mismatch", ["export", "{case}/out", "--format", "mp4", "-o", "{case}/x.webm"], earlier_run, 2,
     "must end in .mp4"),
    ("export unknown suffix", ["export", "{case}/out", "-o", "{case}/x.avi"], earlier_run, 2, "cannot export"),
    ("export corrupt frame", ["export", "{case}/out", "-o", "{case}/x.gif"], corrupt_frame, 1, "not a readable image"),
    ("export empty folder", ["export", "{case}/empty"], empty_folder, 1, "holds no frames"),
    ("export existing file", ["export", "{case}/out", "--format", "gif", "-o", "{case}/out/image.png"],
     earlier_run, 2, "must end in .gif"),
    # eval
    ("eval garbage prompt", ["eval", "--preset", "{tiny}", "--prompts", "{case}/prompts.txt", "-o", "{case}/eval"],
     garbage_prompts, 1, "names no shape"),
    ("eval pipe prompt", ["eval", "--preset", "{tiny}", "--prompts", "{case}/prompts.txt", "-o", "{case}/eval"],
     pipe_prompt, 2, "holds no text"),
    ("eval binary prompts", ["eval", "--preset", "{tiny}", "--prompts", "{case}/prompts.txt", "-o", "{case}/eval"],
     binary_prompts, 1, "not a UTF-8"),
    ("eval output is a file", ["eval", "--preset", "{tiny}", "-o", "{case}/eval"], a_file_at_eval_output, 1,
     "is not a folder"),
    # recipes
    ("from a non-png", ["run", "--from", "{case}/c.yaml", "-o", "{case}/out"], list_config, 1, "not a readable PNG"),
    ("from a png without recipe", ["run", "--from", "{case}/plain.png", "-o", "{case}/out"], png_without_recipe, 1,
     "no pixgen recipe"),
    ("from a missing png", ["run", "--from", "{case}/gone.png", "-o", "{case}/out"], nothing, 1, "does not exist"),
    ("from with a changed input", ["run", "--from", "{case}/made/image.png", "-o", "{case}/out"],
     recipe_with_changed_input, 1, "changed since"),
    ("from with a missing input", ["run", "--from", "{case}/made/image.png", "-o", "{case}/out"],
     recipe_with_missing_input, 1, "is missing"),
]


@pytest.fixture
def done_run(tiny_preset) -> Path:
    """A finished tiny run folder (made once per session), copied by the cases that need an earlier run."""
    out = tiny_preset.parent / "done-run"
    if not out.exists():
        result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "--seed", "1",
                                          "-o", str(out), "-q"])
        assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("name, args, setup, code, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(name, args, setup, code, message, tmp_path, tiny_preset,
                                                   done_run, monkeypatch):
    case = tmp_path / "case"
    case.mkdir()
    setup(case, done_run)
    monkeypatch.chdir(case)
    before = tree(tmp_path)
    argv = [a.format(tiny=tiny_preset, case=case) for a in args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert message in result.output, result.output
    assert "weights_only=False" not in result.output
    assert tree(tmp_path) == before
    assert not (case / "pwned").exists()


def test_table_is_large_enough():
    assert len(CASES) >= 60


def test_refused_overwrite_keeps_every_old_output(tmp_path, tiny_preset, done_run):
    out = tmp_path / "out"
    shutil.copytree(done_run, out)
    before = tree(out)
    result = CliRunner().invoke(cli, ["run", "bad:1:2:3", "--preset", str(tiny_preset), "-o", str(out),
                                      "--overwrite", "-q"])
    assert result.exit_code == 2
    assert tree(out) == before  # frames, image, run.yaml, state: all still the earlier run's


def test_overwrite_replaces_only_pixgen_files(tmp_path, tiny_preset, done_run):
    out = tmp_path / "out"
    shutil.copytree(done_run, out)
    (out / "notes.txt").write_text("mine")
    (out / "frames" / "sketch.png").write_bytes(b"mine")
    result = CliRunner().invoke(cli, ["run", "a blue square", "--preset", str(tiny_preset), "-o", str(out),
                                      "--overwrite", "--save-every", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "frames" / "sketch.png").read_bytes() == b"mine"
    assert sorted(p.name for p in (out / "frames").glob("step-*.png")) == ["step-00003.png"]
    assert yaml.safe_load((out / "run.yaml").read_text())["prompt"] == "a blue square"


def _fail_writes(monkeypatch, code: int, after: int = 0):
    """Make every atomic write after the first ``after`` fail with OSError ``code``."""
    import pixgen.fileio as fileio

    real = fileio.tempfile.mkstemp
    calls = {"n": 0}

    def mkstemp(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("code, message", [(errno.EROFS, "Read-only file system"),
                                           (errno.EACCES, "Permission denied")])
def test_unwritable_output_is_one_line(tmp_path, tiny_preset, monkeypatch, code, message):
    _fail_writes(monkeypatch, code)
    result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o",
                                      str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: cannot write ")
    assert message in result.output and "Traceback" not in result.output


def test_full_disk_says_so_and_keeps_what_was_saved(tmp_path, tiny_preset, monkeypatch):
    # steps 6, save_every 2: writes are state+run.yaml at step 1, then frame+state+run.yaml at 2 and 4
    _fail_writes(monkeypatch, errno.ENOSPC, after=5)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o", str(out), "-q",
                                      "--seed", "1"])
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert (out / "frames" / "step-00002.png").is_file()
    kept = torch.load(out / "state.pt", weights_only=True)
    assert kept["step"] == 2
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no half-written temp files left


def test_out_of_memory_in_a_step_is_one_line(tmp_path, tiny_preset, monkeypatch):
    import pixgen.engine.loop as engine

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(engine, "make_cutouts", no_memory)
    result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o",
                                      str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1
    assert "out of memory" in result.output and "fewer --cut-count" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # it failed before its first step: no trace


def test_memory_estimate_refuses_before_allocating(tmp_path, tiny_preset, monkeypatch):
    import pixgen.pipeline.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o",
                                      str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1
    assert "needs about" in result.output and "smaller --size" in result.output
    assert not (tmp_path / "out").exists()


def test_bug_keeps_traceback_after_a_summary_line(tmp_path, tiny_preset, monkeypatch):
    import pixgen.engine.loop as engine

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(engine, "make_cutouts", broken)
    result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o",
                                      str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1
    assert "internal error" in result.output and "ZeroDivisionError: boom" in result.output
    assert isinstance(result.exception, ZeroDivisionError)  # the traceback is kept


def test_ctrl_c_while_loading_models_leaves_no_folder(tmp_path, tiny_preset, monkeypatch):
    import pixgen.pipeline.runner as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "load_models", interrupted)
        result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o", str(out), "-q"])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "Traceback" not in result.output
    assert not out.exists()
    retry = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o", str(out), "-q"])
    assert retry.exit_code == 0, retry.output  # the corrected retry with the same -o is not refused


def test_ctrl_c_during_first_step_leaves_no_folder(tmp_path, tiny_preset, monkeypatch):
    import pixgen.engine.loop as engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "make_cutouts", interrupted)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o", str(out), "-q"])
    assert result.exit_code == 130 and not out.exists()


def test_export_without_ffmpeg_binary_is_one_line(tmp_path, done_run, monkeypatch):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-ffmpeg"))
    before = tree(done_run)
    result = CliRunner().invoke(cli, ["export", str(done_run), "--format", "mp4"])
    assert result.exit_code == 1
    assert "ffmpeg" in result.output and "Traceback" not in result.output
    assert tree(done_run) == before


def test_export_webm_is_a_real_video(tmp_path, done_run):
    import imageio.v3 as iio

    out = tmp_path / "x.webm"
    result = CliRunner().invoke(cli, ["export", str(done_run), "-o", str(out), "--fps", "5"])
    assert result.exit_code == 0, result.output
    frames = iio.imread(out, index=None, extension=".webm")
    assert frames.shape[0] == 3 and frames.shape[1:3] == (32, 32)  # frames at steps 2 and 4, then the image
