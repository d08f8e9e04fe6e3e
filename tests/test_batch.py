"""pixgen batch on tiny models: manifests, validation, job folders, the log, resume, models loaded once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from pixgen.batch.manifest import plan_batch
from pixgen.batch.runner import run_batch
from pixgen.cli import cli
from pixgen.config import RunConfig
from pixgen.pipeline.output import read_png_text


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def write_manifest(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def manifest(tmp_path, tiny_preset):
    """Two prompts x two seeds on the tiny preset, plus one named job."""
    return write_manifest(tmp_path / "m.yaml", {
        "defaults": {"preset": str(tiny_preset), "steps": 4},
        "jobs": [{"name": "hero", "prompt": "a green triangle", "seed": 9}],
        "matrix": {"prompt": ["a red circle", "a blue square"], "seed": [0, 1]},
    })


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]


def test_matrix_expands_in_documented_order_with_stable_folders(tmp_path, tiny_preset, manifest):
    jobs = plan_batch(manifest, tmp_path / "out")
    assert [(j.config.prompt, j.config.seed) for j in jobs] == [
        ("a green triangle", 9), ("a red circle", 0), ("a red circle", 1), ("a blue square", 0), ("a blue square", 1)]
    assert [j.name for j in jobs] == ["hero", "a-red-circle-s0", "a-red-circle-s1", "a-blue-square-s0",
                                      "a-blue-square-s1"]
    assert all(j.config.steps == 4 and j.config.vqgan == "tiny-vqgan" for j in jobs)
    assert [j.folder for j in plan_batch(manifest, tmp_path / "out")] == [j.folder for j in jobs]
    assert all(j.folder.parent == tmp_path / "out" and j.folder.name.startswith(j.name + "-") for j in jobs)

    data = yaml.safe_load(manifest.read_text())
    data["matrix"]["seed"] = [0, 2]
    data["matrix"]["steps"] = [3, 5]  # a third key: 2 x 2 x 2
    changed = plan_batch(write_manifest(tmp_path / "m2.yaml", data), tmp_path / "out")
    assert len(changed) == 9 and [j.config.steps for j in changed[1:3]] == [3, 5]
    assert changed[0].folder == jobs[0].folder  # the untouched job keeps its folder


def test_a_setting_at_its_default_leaves_folder_and_seed_alone(tmp_path, tiny_preset):
    def plan(**settings):
        data = {"defaults": {"preset": str(tiny_preset), **settings}, "jobs": [{"prompt": "a red circle"}]}
        return plan_batch(write_manifest(tmp_path / "m.yaml", data), tmp_path / "out")[0]

    plain = plan()
    spelled_out = plan(augment_shear=0.0, augment_erase=0, precision="auto")  # the built-in defaults
    assert (spelled_out.folder, spelled_out.config.seed) == (plain.folder, plain.config.seed)
    changed = plan(augment_shear=5)
    assert changed.folder != plain.folder and changed.config.seed != plain.config.seed


def test_a_new_setting_that_defaults_to_off_moves_no_job(tmp_path, tiny_preset, monkeypatch):
    import pixgen.batch.manifest as batch_module

    path = write_manifest(tmp_path / "m.yaml", {"defaults": {"preset": str(tiny_preset)},
                                                "jobs": [{"prompt": "a red circle"}]})
    before = plan_batch(path, tmp_path / "out")[0]
    real = batch_module.config_to_yaml  # a newer pixgen: every config now also records a setting, off
    monkeypatch.setattr(batch_module, "config_to_yaml", lambda config: real(config) + "augment_new: 0.0\n")
    after = plan_batch(path, tmp_path / "out")[0]
    assert (after.folder, after.config.seed) == (before.folder, before.config.seed)


def test_a_changed_built_in_default_reruns_the_job_in_its_folder(tmp_path, tiny_preset, monkeypatch):
    import pixgen.batch.manifest as batch_module

    out = tmp_path / "out"

    def plan(lr: float):  # as if the built-in default lr were ``lr`` and the job relied on it
        monkeypatch.setattr(batch_module, "DEFAULT_CONFIG", replace(RunConfig(), lr=lr))
        data = {"defaults": {"preset": str(tiny_preset), "steps": 3, "lr": lr}, "jobs": [{"prompt": "a red circle"}]}
        return plan_batch(write_manifest(tmp_path / "m.yaml", data), out)

    first = plan(0.2)
    assert run_batch(first, out, threads=1).names("done") == [first[0].name]
    newer = plan(0.25)
    assert newer[0].folder == first[0].folder  # the same identity...
    again = run_batch(newer, out, threads=1)  # ...but its outputs were made with the old lr
    assert again.skipped == 0 and again.names("done") == [newer[0].name]
    assert yaml.safe_load((out / newer[0].folder.name / "run.yaml").read_text())["lr"] == 0.25
    assert run_batch(newer, out, threads=1).skipped == 1


def test_plural_keys_presets_and_derived_seeds(tmp_path, tiny_preset):
    other = tmp_path / "other.yaml"
    other.write_text(tiny_preset.read_text() + "steps: 2\n")
    path = write_manifest(tmp_path / "m.yaml", {"matrix": {"prompts": ["a", "b"], "presets": [str(tiny_preset),
                                                                                               str(other)]}})
    jobs = plan_batch(path, tmp_path / "out")
    assert [(j.config.prompt, j.config.steps) for j in jobs] == [("a", 6), ("a", 2), ("b", 6), ("b", 2)]
    assert all(isinstance(j.config.seed, int) for j in jobs)  # no seed given: derived from the settings
    assert [j.config.seed for j in plan_batch(path, tmp_path / "out")] == [j.config.seed for j in jobs]


@pytest.mark.parametrize(("data", "expected"), [
    ({"defaults": {"stepz": 3}, "jobs": [{"prompt": "x"}]}, "defaults: unknown setting 'stepz' (did you mean steps?)"),
    ({"jobs": [{"name": "a", "prompt": "x", "colour": 1}]}, "job 'a': unknown setting 'colour'"),
    ({"jobs": [{"name": "a", "prompt": "x", "steps": "many"}]}, "job 'a': invalid value 'many' for 'steps'"),
    ({"jobs": [{"name": "a", "prompt": "x", "steps": 0}]}, "job 'a': invalid value 0 for 'steps'"),
    ({"jobs": [{"prompt": "x"}, {"prompt": "y", "lr": -1}]}, "job #2: invalid value -1.0 for 'lr'"),
    ({"matrix": {}}, "matrix must be a non-empty mapping"),
    ({"matrix": {"prompt": []}}, "matrix 'prompt' must be a non-empty list"),
    ({"matrix": {"prompt": "a red circle"}}, "matrix 'prompt' must be a non-empty list"),
    ({"matrix": {"prompt": ["x"], "sede": [1]}}, "matrix: unknown setting 'sede' (did you mean seed?)"),
    ({"matrix": {"prompt": ["x"], "seed": [1, "two"]}}, "matrix job #2 (prompt='x', seed='two'): invalid value "
                                                        "'two' for 'seed'"),
    ({"jobs": [{"name": "a", "prompt": "x"}, {"name": "a", "prompt": "y"}]}, "job name 'a' is used twice"),
    ({"jobs": [{"prompt": "x", "seed": 1}, {"prompt": "x", "seed": 1}]}, "same settings and name as job #1"),
    ({"jobs": [{"name": "a", "prompt": "x", "preset": "nosuch"}]}, "job 'a': unknown preset 'nosuch'"),
    ({"jobs": [{"name": "a", "prompt": "x", "output": "/tmp/x"}]}, "job 'a': unknown setting 'output'"),
    ({"jobs": [{"name": "a", "prompt": ""}]}, "job 'a': invalid value '' for 'prompt'"),
    ({"jobz": []}, "unknown section 'jobz'"),
    ({"defaults": {"steps": 3}}, "defines no jobs"),
    ({"jobs": ["a red circle"]}, "jobs must be a list of mappings"),
    ({"jobs": [{"name": "a", "prompt": "x", "init_image": "missing.png", "init": "image"}]},
     "job 'a': cannot read input image missing.png"),
])
def test_invalid_manifest_is_one_line_and_writes_nothing(tmp_path, tiny_preset, data, expected):
    data = {**data, "defaults": {"preset": str(tiny_preset), **data.get("defaults", {})}}
    path = write_manifest(tmp_path / "m.yaml", data)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(out)])
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert expected in lines[0]
    assert result.exit_code == (1 if "input image" in expected else 2)
    assert not out.exists()


def test_dry_run_lists_jobs_and_writes_nothing(tmp_path, manifest):
    out = tmp_path / "out"
    result = invoke("batch", manifest, "-o", out, "--dry-run")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert lines[-1] == "5 jobs" and lines[0].startswith(f"hero  {out}/hero-")
    assert "prompt='a red circle' seed=1" in lines[2]
    assert not out.exists()


def test_names_cannot_escape_and_planted_symlinks_are_refused(tmp_path, tiny_preset):
    path = write_manifest(tmp_path / "m.yaml", {"defaults": {"preset": str(tiny_preset)}, "jobs": [
        {"name": "../../escape", "prompt": "x", "seed": 1}, {"name": "/etc/passwd", "prompt": "y", "seed": 1}]})
    out = tmp_path / "out"
    jobs = plan_batch(path, out)
    assert all(job.folder.parent == out for job in jobs)
    assert [job.folder.name.rsplit("-", 1)[0] for job in jobs] == ["escape", "etc-passwd"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    jobs[0].folder.symlink_to(elsewhere, target_is_directory=True)
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 1 and "is a symbolic link" in result.output
    assert list(elsewhere.iterdir()) == [] and not (out / "batch.jsonl").exists()

    jobs[0].folder.unlink()
    (out / "batch.jsonl").symlink_to(elsewhere / "log")
    result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 1 and "batch.jsonl is a symbolic link" in result.output
    assert list(elsewhere.iterdir()) == []


def test_batch_loads_models_once_logs_skips_and_reruns_only_changed_jobs(tmp_path, manifest, monkeypatch):
    from pixgen.pipeline import runner as pipeline

    loads = {"vqgan": 0, "clip": 0}
    real_vqgan, real_clip = pipeline.load_vqgan, pipeline.load_clip

    def count(kind, real):
        def load(*args, **kwargs):
            loads[kind] += 1
            return real(*args, **kwargs)
        return load

    monkeypatch.setattr(pipeline, "load_vqgan", count("vqgan", real_vqgan))
    monkeypatch.setattr(pipeline, "load_clip", count("clip", real_clip))
    out = tmp_path / "out"
    result = invoke("batch", manifest, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert loads == {"vqgan": 1, "clip": 1}
    assert "5 of 5 jobs done (0 already done before)" in result.output
    jobs = plan_batch(manifest, out)
    records = log_records(out)
    assert [r["event"] for r in records] == ["start", "end"] * 5
    for job in jobs:
        end = next(r for r in records if r["event"] == "end" and r["folder"] == job.folder.name)
        assert end["job"] == job.name and end["seed"] == job.config.seed and end["steps_done"] == 4
        assert isinstance(end["loss"], float) and end["seconds"] > 0
        assert set(end["files"]) >= {"image.png", "run.yaml", "progress.gif", "frames/step-00002.png"}
        text = read_png_text(job.folder / "image.png")
        assert text["prompt"] == job.config.prompt and text["seed"] == str(job.config.seed)
    images = {job.name: (job.folder / "image.png").read_bytes() for job in jobs}

    result = invoke("batch", manifest, "-o", out, "-q")
    assert "5 of 5 jobs done (5 already done before)" in result.output
    assert len(log_records(out)) == 10  # nothing ran

    data = yaml.safe_load(manifest.read_text())
    data["jobs"][0]["steps"] = 3
    write_manifest(manifest, data)
    assert invoke("batch", manifest, "-o", out, "-q").exit_code == 0
    new = log_records(out)[10:]
    assert [(r["event"], r["job"]) for r in new] == [("start", "hero"), ("end", "hero")]
    assert new[1]["steps_done"] == 3 and new[1]["folder"] != jobs[0].folder.name
    assert all((job.folder / "image.png").read_bytes() == images[job.name] for job in jobs)


def test_gallery_and_contact_sheet_reference_every_job(tmp_path, manifest):
    out = tmp_path / "out"
    assert invoke("batch", manifest, "-o", out, "-q").exit_code == 0
    page = (out / "index.html").read_text()
    for job in plan_batch(manifest, out):
        assert f'src="{job.folder.name}/image.png"' in page and f'href="{job.folder.name}/"' in page
        assert job.config.prompt in page and f"seed {job.config.seed}" in page
    assert "http://" not in page and "https://" not in page
    sheet = Image.open(out / "contact-sheet.png")
    assert sheet.size == (5 * 128, 128 + 13 * 3 + 5)


def test_junk_and_tampered_outputs_are_rerun_and_other_files_kept(tmp_path, manifest):
    out = tmp_path / "out"
    jobs = plan_batch(manifest, out)
    jobs[1].folder.mkdir(parents=True)
    (jobs[1].folder / "image.png").write_bytes(b"\x89PNG truncated")
    (jobs[1].folder / ".image.png.abc.tmp.png").write_bytes(b"half")
    (jobs[1].folder / "notes.txt").write_text("mine")
    assert invoke("batch", manifest, "-o", out, "-q").exit_code == 0
    assert Image.open(jobs[1].folder / "image.png").size == (32, 32)
    assert (jobs[1].folder / "notes.txt").read_text() == "mine"
    assert not list(jobs[1].folder.glob(".*tmp*"))
    good = (jobs[2].folder / "image.png").read_bytes()
    (jobs[2].folder / "image.png").write_bytes(b"tampered")
    result = invoke("batch", manifest, "-o", out, "-q")
    assert "5 of 5 jobs done (4 already done before)" in result.output
    assert (jobs[2].folder / "image.png").read_bytes() == good


def test_ctrl_c_saves_the_job_summarises_and_resumes_exactly(tmp_path, manifest, monkeypatch):
    from pixgen.cli import progress as cli_module
    from pixgen.pipeline.runner import run

    out = tmp_path / "out"
    jobs = plan_batch(manifest, out)
    calls = {"n": 0}
    real_step = cli_module.BatchProgress.step

    def interrupting(self, step):
        calls["n"] += 1
        if calls["n"] == 4 + 3:  # the second job's third step
            raise KeyboardInterrupt
        real_step(self, step)

    monkeypatch.setattr(cli_module.BatchProgress, "step", interrupting)
    result = CliRunner().invoke(cli, ["batch", str(manifest), "-o", str(out), "-q"])
    assert result.exit_code == 130
    assert "1 of 5 jobs done" in result.output and "a-red-circle-s0 saved part-way" in result.output
    assert f"Continue with: pixgen batch {manifest} -o {out}" in result.output
    assert [r["event"] for r in log_records(out)] == ["start", "end", "start", "interrupted"]

    monkeypatch.setattr(cli_module.BatchProgress, "step", real_step)
    assert invoke("batch", manifest, "-o", out, "-q").exit_code == 0
    assert log_records(out)[4]["resume_from"] == 3
    whole = run(jobs[1].config, tmp_path / "whole")
    assert (jobs[1].folder / "image.png").read_bytes() == whole.image_path.read_bytes()


def wait_for(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the batch")
        time.sleep(0.02)


def test_kill_9_during_and_between_jobs_then_rerun_completes_exactly(tmp_path, tiny_preset):
    from pixgen.pipeline.runner import run

    manifest = write_manifest(tmp_path / "m.yaml", {
        "defaults": {"preset": str(tiny_preset), "steps": 24, "save_every": 4},
        "matrix": {"prompt": ["a red circle", "a blue square"], "seed": [0]}})
    out = tmp_path / "out"
    jobs = plan_batch(manifest, out)
    command = [sys.executable, "-m", "pixgen", "batch", str(manifest), "-o", str(out), "-q"]

    def events() -> list[tuple[str, str]]:
        path = out / "batch.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(r["event"], r["folder"]) for r in map(json.loads, lines[:-1] + [
            line for line in lines[-1:] if line.endswith("}")])]

    first = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # kill -9 during the first job, once it has a checkpoint part-way
    wait_for(lambda: (jobs[0].folder / "state.pt").is_file() or first.poll() is not None)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert ("end", jobs[0].folder.name) not in events()

    second = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # kill -9 again as soon as the first job has ended: between jobs, or early in the second
    wait_for(lambda: ("end", jobs[0].folder.name) in events() or second.poll() is not None)
    second.send_signal(signal.SIGKILL)
    second.wait()

    result = invoke("batch", manifest, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    records = log_records(out)
    assert records[1]["event"] == "start" and records[1]["resume_from"] is not None  # resumed, not restarted
    ends = [r for r in records if r["event"] == "end"]
    assert sorted(r["folder"] for r in ends) == sorted(j.folder.name for j in jobs)  # each job ended once
    for job in jobs:
        assert len(list(out.glob("*/image.png"))) == 2 and not list(job.folder.glob(".*tmp*"))
        text = read_png_text(job.folder / "image.png")
        assert (text["prompt"], text["seed"], text["steps_done"]) == (job.config.prompt, "0", "24")
    whole = run(jobs[0].config, tmp_path / "whole")
    assert (jobs[0].folder / "image.png").read_bytes() == whole.image_path.read_bytes()


def test_two_worker_processes_share_out_the_jobs(tmp_path, tiny_preset):
    manifest = write_manifest(tmp_path / "m.yaml", {"defaults": {"preset": str(tiny_preset), "steps": 3},
                                                    "matrix": {"prompt": ["a", "b", "c"], "seed": [0]}})
    out = tmp_path / "out"
    result = invoke("batch", manifest, "-o", out, "-q", "--devices", "cpu,cpu")
    assert result.exit_code == 0, result.output
    assert "3 of 3 jobs done" in result.output
    records = log_records(out)
    assert sorted(r["event"] for r in records) == ["end"] * 3 + ["start"] * 3
    for job in plan_batch(manifest, out):
        assert read_png_text(job.folder / "image.png")["steps_done"] == "3"
    assert "3 of 3 jobs done (3 already done before)" in invoke("batch", manifest, "-o", out, "-q").output


def test_more_cpu_workers_than_cores_are_told_to_use_fewer():
    from pixgen.batch.local import pool_note

    assert pool_note([None, None], cores=2) is None  # one worker per core: faster than one process
    assert pool_note(["cpu"] * 3, cores=2) == ("note: 3 worker processes took turns on 2 CPU cores; --jobs 2 is as "
                                               "fast or faster, with less memory")
    assert "shared one device (cuda:0)" in pool_note(["cuda:0", "cuda:0"], cores=2)
    assert pool_note(["cuda:0", "cuda:1"], cores=2) is None


def test_log_skips_a_torn_last_line_and_appends_on_a_fresh_line(tmp_path):
    from pixgen.batch.log import BatchLog

    log = BatchLog(tmp_path / "batch.jsonl")
    log.append({"event": "start", "folder": "a-1"})
    with open(log.path, "ab") as handle:
        handle.write(b'{"event": "end", "folder": "a-1", "fi')  # killed mid-write
    assert [r["event"] for r in log.records()] == ["start"]
    log.append({"event": "start", "folder": "a-1"})
    assert [r["event"] for r in log.records()] == ["start", "start"]
    assert log.path.read_text().count("\n") == 3
