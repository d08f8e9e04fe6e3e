"""benchmarks/gpu.py, the GPU check of issue #26, exercised on the CPU with tiny models (--smoke)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from numbers import Number
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"
SECTIONS = ("environment", "setup", "step_time", "grad_cosine", "vram", "levers", "runs", "default_run",
            "determinism", "batch", "animation", "compile")
STATUSES = ("ok", "partial", "error", "skipped")


@pytest.fixture
def cpu_only(request):
    """The smoke run uses tiny models on the CPU; with --device cuda, run benchmarks/gpu.py itself instead."""
    if request.config.getoption("--device") != "cpu":
        pytest.skip("CPU-only: on a GPU machine run `python3 benchmarks/gpu.py --out DIR` (docs/gpu.md)")


def run_script(out: Path, *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXGEN_")}  # the script sets its own
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                            env=env, cwd=out, timeout=timeout)
    return result, time.monotonic() - start


def numbers_in(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, Number):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in numbers_in(v)]
    return []


def test_smoke_run_writes_every_section(tmp_path, cpu_only):
    out = tmp_path / "out"
    out.mkdir()
    result, seconds = run_script(out, "--smoke", "--work", str(tmp_path / "work"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"gpu.py --smoke took {seconds:.1f} s")

    report = json.loads((out / "gpu-report.json").read_text())
    markdown = (out / "gpu-report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["gpu-log.txt", "gpu-report.json", "gpu-report.md"]
    assert not list((tmp_path / "work").iterdir()), "the scratch folder is left behind"
    sections = report["sections"]
    assert list(sections) == list(SECTIONS)
    for name, section in sections.items():
        assert section["status"] in STATUSES, name
        assert isinstance(section["seconds"], Number)
        if section["status"] in ("ok", "partial"):
            results = section["results"]
            assert numbers_in(results["data"]), f"{name} recorded no numbers"
            assert results["tables"] and all(t["rows"] for t in results["tables"]), name
            for tab in results["tables"]:
                assert f"**{tab['title']}**" in markdown
                assert "| " + " | ".join(tab["columns"]) + " |" in markdown
        elif section["status"] == "error":
            assert section["error"], name
        else:
            assert section["reason"], name
        assert f"(`{name}`)" in markdown
    # on the CPU with tiny models nothing may fail: an error here is a bug in the script
    failed = {n: s.get("error") for n, s in sections.items() if s["status"] == "error"}
    assert not failed, failed
    assert "## Summary" in markdown and report["summary"]
    assert all(isinstance(v, Number) or v is None for v in report["summary"].values())
    assert report["sections"]["determinism"]["results"]["data"]["default"]["same_bytes"] is True


def test_sections_skip_themselves_when_no_budget_is_left(tmp_path, cpu_only):
    result, _ = run_script(tmp_path, "--smoke", "--budget", "0", "--only", "runs", "--work", str(tmp_path / "w"),
                           timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sections = json.loads((tmp_path / "gpu-report.json").read_text())["sections"]
    assert list(sections) == ["environment", "setup", "runs"]
    assert all(s["status"] == "skipped" and "budget" in s["reason"] for s in sections.values())
    assert "Skipped:" in (tmp_path / "gpu-report.md").read_text()


def test_unknown_section_is_refused(tmp_path):
    result, _ = run_script(tmp_path, "--smoke", "--only", "warp_drive", timeout=300)
    assert result.returncode == 2 and "warp_drive" in result.stderr


def test_largest_sizes_solves_the_fitted_memory_model():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    gib = 2**30
    # peak = 1 GiB + 20 KiB per pixel: a 24 GiB card (less the context) fits sqrt(22.5 GiB / 20 KiB) ~ 1086 px
    measured = {"fp32": [(s, gib + 20 * 1024 * s * s) for s in (256, 512, 768, 1024)], "bf16": [(256, gib)]}
    fits = gpu.largest_sizes(measured, None)
    side = fits["fp32"]["24"]
    assert side % 16 == 0 and 1056 <= side <= 1088
    assert fits["fp32"]["24"] < fits["fp32"]["48"] < fits["fp32"]["80"] < fits["fp32"]["139"]
    assert fits["bf16"] == {"model": "too few sizes measured"}
