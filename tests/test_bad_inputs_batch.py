"""Bad inputs, round two: sizes and counts bounded before any work, refused batches leave no files,
every batch ``start`` gets its end, and error lines stay short.

Each table row names a command line (``{tiny}`` is the tiny-model preset, ``{case}`` the case's own
folder), a setup that plants files in the case folder, the exit code and a piece of the one-line
message. Every row checks that there is no traceback, that the error is one line of at most about
300 characters, and that nothing in the test's folder changed apart from what the setup planted.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_bad_inputs import tree

from pixgen.batch.manifest import MAX_JOBS, plan_batch
from pixgen.cli import cli
from pixgen.errors import ConfigError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
NEEDS_RAY = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray installed")
HUGE = "9" * 5000  # more digits than Python converts to an int


def manifest(case: Path, data: dict, name: str = "m.yaml") -> Path:
    """Write a manifest into the case folder; ``{tiny}`` in a preset value is the tiny preset."""
    path = case / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def preset_of(case: Path) -> str:
    return str(case.parent / "tiny.yaml")  # placed by the test beside the case folder


# --- setups: each plants files in the case folder --------------------------------------------------

def nothing(case: Path) -> None:
    pass


def one_job(case: Path) -> None:
    manifest(case, {"defaults": {"preset": preset_of(case)}, "jobs": [{"name": "a", "prompt": "a red circle"}]})


def ten_million_jobs(case: Path) -> None:
    manifest(case, {"defaults": {"preset": preset_of(case)},
                    "matrix": {"prompt": [f"p{i}" for i in range(10)], "seed": list(range(1000)),
                               "steps": list(range(1, 1001))}})


def one_job_too_many(case: Path) -> None:
    manifest(case, {"defaults": {"preset": preset_of(case)}, "jobs": [{"prompt": "x"}],
                    "matrix": {"prompt": [f"p{i}" for i in range(100)], "seed": list(range(MAX_JOBS // 100))}})


def huge_manifest(case: Path) -> None:
    one_job(case)
    with open(case / "m.yaml", "a") as handle:
        handle.write("#" * (5 * 2**20) + "\n")


def cuda_job(case: Path) -> None:
    manifest(case, {"defaults": {"preset": preset_of(case)},
                    "jobs": [{"name": "gpu", "prompt": "a red circle", "device": "cuda"}]})


def far_unknown_key(case: Path) -> None:
    manifest(case, {"defaults": {"preset": preset_of(case)},
                    "jobs": [{"name": "a", "prompt": "x", "zzzzqqq": 1}]})


def huge_number_config(case: Path) -> None:
    (case / "c.yaml").write_text(f"steps: {HUGE}\n")


def long_story_file(case: Path) -> None:
    (case / "story.yaml").write_text(yaml.safe_dump({"frames": 200, "schedule": " ^ ".join(["a red circle"] * 101)}))


def huge_frame_range(case: Path) -> None:
    (case / "story.yaml").write_text(yaml.safe_dump({"frames": 4, "schedule": [
        {"prompt": "a red circle", "frames": f"0-{HUGE}"}]}))


def misspelt_animation_key(case: Path) -> None:
    (case / "story.yaml").write_text(yaml.safe_dump({"frams": 4, "schedule": "a red circle"}))


BATCH = ["batch", "{case}/m.yaml", "-o", "{case}/out", "-q"]
RUN = ["run", "a red circle", "--preset", "{tiny}", "-o", "{case}/out", "-q"]
ANIMATE = ["animate", "a red circle", "--preset", "{tiny}", "-o", "{case}/out", "-q"]

CASES = [
    # 1. manifest size, counted before anything is expanded
    ("matrix of ten million jobs", BATCH, ten_million_jobs, 2,
     "expands to 10,000,000 jobs; the limit is 10,000"),
    ("jobs plus matrix one over the limit", BATCH, one_job_too_many, 2, f"expands to {MAX_JOBS + 1:,} jobs"),
    ("manifest file over 4 MiB", BATCH, huge_manifest, 2, "the limit is 4 MiB"),
    # 2. workers and threads bounded by the machine, before the manifest is planned
    ("jobs far beyond any machine", [*BATCH, "--jobs", "100000"], one_job, 2, "--jobs 100000, but this machine has"),
    ("devices list far beyond any machine", [*BATCH, "--devices", ",".join(["cpu"] * 10000)], one_job, 2,
     "--devices lists 10000 workers"),
    ("threads beyond the cores", [*BATCH, "--threads", "100000"], one_job, 2, "--threads 100000 is more than"),
    pytest.param("ray threads beyond any worker", [*BATCH, "--executor", "ray", "--threads", "100000"], one_job, 2,
                 "--threads 100000 is more than 1024 CPUs per Ray worker", marks=NEEDS_RAY,
                 id="ray threads beyond any worker"),
    # 4. devices this machine lacks: refused before DIR exists
    pytest.param("devices cuda:0 without CUDA", [*BATCH, "--devices", "cuda:0"], one_job, 2,
                 "CUDA is not available", marks=NO_CUDA, id="devices cuda:0 without CUDA"),
    pytest.param("a job asks for cuda without CUDA", BATCH, cuda_job, 2,
                 "job 'gpu': device 'cuda' was asked for, but CUDA is not available here", marks=NO_CUDA,
                 id="a job asks for cuda without CUDA"),
    # 3. every size, count and frame number has an upper bound
    ("save_every beyond steps limit", [*RUN, "--save-every", "1000000"], nothing, 2,
     "'save_every': must be between 0 (no frames) and 100000"),
    ("seventeen CLIP models", [*RUN, "--set", f"clip=[{','.join(['tiny-clip'] * 17)}]"], nothing, 2,
     "at most 16 CLIP models, not 17"),
    ("three hundred prompts", ["run", "|".join(["a red circle"] * 300), *RUN[2:]], nothing, 2,
     "300 prompts (text, image, noise and negative together); the limit is 256"),
    ("noise seed past 2**63", [*RUN, "--noise-prompt", str(2**64)], nothing, 2, "between 0 and 2**63 - 1"),
    ("number too long in a config file", [*RUN, "--config", "{case}/c.yaml"], huge_number_config, 2,
     "holds a number too long"),
    ("number too long in --set", [*RUN, "--set", f"steps={HUGE}"], nothing, 2, "invalid value '99999"),
    ("animation interpolated past the frame limit", [*ANIMATE, "--frames", "5000", "--interpolate", "30"], nothing,
     2, "5000 frames with interpolate 30 make 154,970 video frames; the limit is 100,000"),
    ("animation crossfade past the frame limit", [*ANIMATE, "--frames", "3", "--crossfade", "1000000"], nothing, 2,
     "'crossfade': expected a whole number between 0 and 100000"),
    ("keyframe frame with 5000 digits", [*ANIMATE, "--frames", "3", "--zoom", f"0:(1.0), {HUGE}:(1.1)"], nothing, 2,
     "is beyond the last frame"),
    ("story of 101 prompts", ["animate", "{case}/story.yaml", *ANIMATE[2:]], long_story_file, 2,
     "the story has 101 prompts; the limit is 100"),
    ("schedule frame range with 5000 digits", ["animate", "{case}/story.yaml", *ANIMATE[2:]], huge_frame_range, 2,
     "frame range '0-9999"),
    ("export fps past 100", ["export", "{case}", "--fps", "1000"], nothing, 2, "--fps"),
    ("eval seeds past the limit", ["eval", "--preset", "{tiny}", "--seeds", "5000", "-o", "{case}/eval"], nothing, 2,
     "invalid value 5000 for --seeds: must be between 1 and 1000"),
    # 6. unknown keys: the nearest key, or where the list is; never every key
    ("misspelt key in --set", [*RUN, "--set", "stesp=3"], nothing, 2, "unknown setting 'stesp' in --set stesp=3 "
     "(did you mean steps?)"),
    ("far-off key in --set", [*RUN, "--set", "zzzzqqq=3"], nothing, 2,
     "(see Configuration in the README for every config key)"),
    ("far-off key in a manifest job", BATCH, far_unknown_key, 2,
     "job 'a': unknown setting 'zzzzqqq' (see Configuration in the README"),
    ("misspelt animation setting", ["animate", "{case}/story.yaml", *ANIMATE[2:]], misspelt_animation_key, 2,
     ("unknown animation setting 'frams' in", "(did you mean frames?)")),
    ("far-off model name", [*RUN, "--clip", "zzzzqqq"], nothing, 1,
     "unknown clip model 'zzzzqqq'; see pixgen models list"),
]


@pytest.fixture
def placed_preset(tmp_path, tiny_preset) -> Path:
    """The tiny preset copied beside the case folder, so manifests can name it by a path inside the test folder."""
    copy = tmp_path / "tiny.yaml"
    copy.write_bytes(tiny_preset.read_bytes())
    return copy


@pytest.mark.parametrize("name, args, setup, code, message",
                         [pytest.param(*c, id=c[0]) if type(c) is tuple else c for c in CASES])
def test_bad_input_is_one_short_line_and_leaves_no_file(name, args, setup, code, message, tmp_path, placed_preset,
                                                        monkeypatch):
    case = tmp_path / "case"
    case.mkdir()
    setup(case)
    monkeypatch.chdir(case)
    before = tree(tmp_path)
    argv = [a.format(tiny=placed_preset, case=case) for a in args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for piece in (message,) if isinstance(message, str) else message:
        assert piece in errors[0], result.output
    assert len(errors[0]) <= 320, errors[0]
    assert tree(tmp_path) == before
    assert not (case / "out").exists()


def test_table_covers_the_brief():
    assert len(CASES) >= 25


# --- the memory cap: independent of this machine's size ---------------------------------------------

def _two_worker_batch(tmp_path: Path, tiny_preset: Path) -> tuple[Path, Path]:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"preset": str(tiny_preset)},
                                    "matrix": {"prompt": ["a red circle", "a blue square"]}}))
    return path, tmp_path / "out"


def test_workers_beyond_free_memory_are_refused_before_any_model_loads(tmp_path, tiny_preset, monkeypatch):
    from pixgen.batch import local
    from pixgen.pipeline import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 100 * 2**20)  # 100 MiB free
    monkeypatch.setattr(local, "job_bytes", lambda jobs: pytest.fail("loaded models to refuse 2 x 400 MiB"))
    path, out = _two_worker_batch(tmp_path, tiny_preset)
    before = tree(tmp_path)
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(out), "-q", "--devices", "cpu,cpu"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("Error: 2 worker processes need about 0.8 GiB on cpu (the process, its models "
                                     "and one step), but it has 0.1 GiB free; run it in one process (no --jobs or "
                                     "--devices)")
    assert tree(tmp_path) == before and not out.exists()


def test_workers_whose_models_and_step_do_not_fit_are_told_how_many_do(tmp_path, tiny_preset, monkeypatch):
    from pixgen.pipeline import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 3 * 2**30)  # 3 GiB free
    monkeypatch.setattr(memory, "estimate_step_bytes", lambda config, models: 2 * 2**30)  # 2 GiB a step
    path, out = _two_worker_batch(tmp_path, tiny_preset)
    before = tree(tmp_path)
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(out), "-q", "--jobs", "2"])
    assert result.exit_code == 2, result.output
    assert "2 worker processes need about 4.8 GiB on cpu" in result.output
    assert result.output.strip().endswith("but it has 3.0 GiB free; use --jobs 1 or fewer")
    assert tree(tmp_path) == before and not out.exists()


@NO_CUDA
def test_library_run_batch_refuses_a_missing_device_before_making_the_folder(tmp_path, tiny_preset):
    from pixgen.batch.runner import run_batch

    path, out = _two_worker_batch(tmp_path, tiny_preset)
    jobs = plan_batch(path, out)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run_batch(jobs, out, devices=["cuda:0"])
    with pytest.raises(ConfigError, match="invalid value 0 for --jobs"):
        run_batch(jobs, out, workers=0)
    assert not out.exists()


# --- every start gets its end or a failure record ------------------------------------------------------

def _events(out: Path) -> list[tuple[str, str]]:
    return [(r["event"], r["job"]) for r in map(json.loads, (out / "batch.jsonl").read_text().splitlines())]


def test_a_config_error_found_inside_a_job_is_logged_and_the_job_runs_again(tmp_path, tiny_preset, monkeypatch):
    from pixgen.batch import local

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"preset": str(tiny_preset), "steps": 2},
                                    "jobs": [{"name": "late", "prompt": "a red circle", "seed": 1}]}))
    out = tmp_path / "out"
    real = local.execute_job

    def found_late(job, on_step=None, device=None, on_load=None):
        raise ConfigError("invalid value 'x' for 'steps': found late")

    monkeypatch.setattr(local, "execute_job", found_late)
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "Error: invalid value 'x' for 'steps': found late"
    assert _events(out) == [("start", "late"), ("failed", "late")]

    monkeypatch.setattr(local, "execute_job", real)
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "1 of 1 jobs done (0 already done before)" in result.output
    assert _events(out)[2:] == [("start", "late"), ("end", "late")]


def test_ctrl_c_before_a_jobs_first_step_closes_its_start(tmp_path, tiny_preset, monkeypatch):
    from pixgen.batch import local

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"preset": str(tiny_preset), "steps": 2},
                                    "jobs": [{"name": "stopped", "prompt": "a red circle", "seed": 1}]}))
    out = tmp_path / "out"

    def ctrl_c(job, on_step=None, device=None, on_load=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "execute_job", ctrl_c)
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 130, result.output
    records = [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]
    assert [(r["event"], r.get("error")) for r in records] == [("start", None),
                                                               ("failed", "stopped before its first step")]
    assert "pending: stopped" in result.output  # still to do: the summary says how to continue
