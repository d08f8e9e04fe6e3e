"""The whole GPU check (issue #26) in one script: step time, levers, whole runs, VRAM, determinism.

Runs every section on a bare GPU machine in under 8 minutes and writes ``gpu-report.json``,
``gpu-report.md`` and ``gpu-log.txt`` into ``--out`` (on the device machine: ``$OUT``). Each
section has its own time budget and try/except: a failure or a skip is recorded in the report and
the next section runs. The reports are rewritten after every section, so a run killed at its
time limit still leaves what it measured. docs/gpu.md says how to run it on the device machine.

    python3 benchmarks/gpu.py --out DIR [--budget 450] [--only step_time,vram] [--skip compile]
    .venv/bin/python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke   # CPU, tiny models, every section

Sections, in the order they run (most wanted first; ``compile`` takes what time is left):
environment, setup, step_time, grad_cosine, vram, levers, runs, default_run, determinism,
batch, animation, compile. Models carry random weights in the real architectures and formats
(nothing can be downloaded there): the f16 16384 VQGAN as a taming Lightning ``.ckpt`` + YAML,
ViT-B/32 and ViT-B/16 as open_clip state dicts, registered under their usual names through a
registry file passed with ``PIXGEN_REGISTRY``, so the presets run unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

REPORT_JSON, REPORT_MD, LOG_NAME = "gpu-report.json", "gpu-report.md", "gpu-log.txt"
PROMPT = "a watercolour painting of a lighthouse"
DEFAULT_PROMPT = "a red circle on a blue background"
VQGAN_NAME, CLIP_B32, CLIP_B16 = "vqgan_imagenet_f16_16384", "ViT-B-32-openai", "ViT-B-16-openai"
OPEN_CLIP_ARCH = {CLIP_B32: "ViT-B-32-quickgelu", CLIP_B16: "ViT-B-16-quickgelu"}
GIB = 2**30
CARDS_GIB = (24, 48, 80, 139)  # card sizes for the largest-size extrapolation
CONTEXT_GIB = 0.5  # what the CUDA context and libraries take on a card before pixgen allocates
LIGHTNING_CLASS = "pytorch_lightning.callbacks.model_checkpoint"


# --- sizes and counts per mode -------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    step_sizes: tuple[int, ...]
    cut_count: int
    warmup: int  # steps before timing, per variant
    block: int  # steps per timed block (one pair of CUDA events)
    rounds: int  # timed blocks per variant, interleaved
    lever_size: int
    two_clip_size: tuple[int, int]  # the quality preset's size, for the two-CLIP lever
    two_clip_cuts: int
    vram_sizes: tuple[int, ...]
    run_flags: tuple[str, ...]  # extra flags for every preset run (smoke: tiny sizes)
    det_steps: int
    batch_steps: int
    batch_jobs: int
    anim_flags: tuple[str, ...]
    default_flags: tuple[str, ...]
    compile_rounds: int


FULL = Plan(step_sizes=(256, 512), cut_count=32, warmup=3, block=5, rounds=5, lever_size=256,
            two_clip_size=(512, 384), two_clip_cuts=64, vram_sizes=(256, 512, 768, 1024, 2048),
            run_flags=(), det_steps=10, batch_steps=30, batch_jobs=8,
            anim_flags=("--frames", "12", "--steps-per-frame", "30", "--first-frame-steps", "50",
                        "--zoom", "1.02"),
            default_flags=(), compile_rounds=6)
SMOKE = Plan(step_sizes=(32, 48), cut_count=4, warmup=1, block=1, rounds=2, lever_size=32,
             two_clip_size=(32, 24), two_clip_cuts=4, vram_sizes=(16, 32, 48, 64),
             run_flags=("--size", "32", "--steps", "3", "--cut-count", "2"), det_steps=2, batch_steps=2,
             batch_jobs=2,
             anim_flags=("--frames", "12", "--steps-per-frame", "1", "--first-frame-steps", "1",
                         "--zoom", "1.02", "--size", "32", "--cut-count", "2"),
             default_flags=("--steps", "5"), compile_rounds=2)


# --- the report ----------------------------------------------------------------------------------

def table(title: str, columns: list[str], rows: list[list[Any]]) -> dict:
    return {"title": title, "columns": columns, "rows": rows}


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3g}"
        return f"{value:.2e}"
    return str(value).replace("|", "\\|").replace("\n", " ")


class Report:
    """The JSON and Markdown reports, rewritten (atomically) after every section."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.data: dict[str, Any] = {"meta": meta, "summary": {}, "sections": {}}
        self.lock = threading.Lock()

    def log(self, text: str) -> None:
        with open(self.out / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(text.rstrip() + "\n")

    def write(self) -> None:
        with self.lock:
            self.data["meta"]["written_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            for name, text in ((REPORT_JSON, json.dumps(self.data, indent=1, default=str)),
                               (REPORT_MD, self.markdown())):
                temp = self.out / f".{name}.tmp"
                temp.write_text(text, encoding="utf-8")
                os.replace(temp, self.out / name)

    def markdown(self) -> str:
        meta = self.data["meta"]
        lines = [f"# pixgen GPU check: {meta.get('device_name', '?')}", "",
                 f"Mode {meta['mode']}, budget {meta['budget_s']} s, elapsed {meta.get('elapsed_s', 0):.0f} s, "
                 f"started {meta['started_at']}. Written by `benchmarks/gpu.py` (docs/gpu.md says what each "
                 "section measures). Times are medians of CUDA-event-timed blocks after warm-up unless "
                 "a table says otherwise; models carry random weights in the real architectures.", ""]
        summary = self.data.get("summary") or {}
        if summary:
            lines += ["## Summary", "", "| what | value |", "|---|---|"]
            lines += [f"| {fmt(k)} | {fmt(v)} |" for k, v in summary.items()]
            lines.append("")
        for name, section in self.data["sections"].items():
            lines += [f"## {section.get('title', name)} (`{name}`)", "",
                      f"Status: **{section['status']}**, {section.get('seconds', 0):.1f} s."]
            if section.get("error"):
                lines.append(f"Error: `{fmt(section['error'])[:600]}`")
            if section.get("reason"):
                lines.append(f"Skipped: {section['reason']}")
            lines.append("")
            results = section.get("results") or {}
            for note in results.get("notes", []):
                lines.append(f"- {note}")
            if results.get("notes"):
                lines.append("")
            for tab in results.get("tables", []):
                lines += [f"**{tab['title']}**", "", "| " + " | ".join(tab["columns"]) + " |",
                          "|" + "---|" * len(tab["columns"])]
                lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in tab["rows"]]
                lines.append("")
        return "\n".join(lines) + "\n"


# --- the context every section gets --------------------------------------------------------------

@dataclass
class Context:
    args: argparse.Namespace
    plan: Plan
    device: torch.device
    work: Path
    report: Report
    start: float
    budget: float
    deadline: float = 0.0  # the running section's
    files: dict[str, Path] = field(default_factory=dict)  # written by setup
    vqgan_arch: dict | None = None

    @property
    def smoke(self) -> bool:
        return self.args.smoke

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def left(self) -> float:
        """Seconds left for the running section."""
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def child_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in paths if Path(p).resolve() != ROOT])
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", PIXGEN_OFFLINE="1",
                   PIXGEN_HOME=str(self.work / "pixgen-home"), TQDM_MININTERVAL="1")
        if "registry" in self.files:
            env["PIXGEN_REGISTRY"] = str(self.files["registry"])
        if not self.cuda:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if self.smoke:  # tiny models on a few shared cores: one thread each is many times faster
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.update(extra)
        return env


def cleanup() -> None:
    """Free what the last section left: Python garbage and the CUDA allocator's cached blocks."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --- models with random weights ------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _tiny_configs() -> tuple[dict, dict]:
    spec = importlib.util.spec_from_file_location("pixgen_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TINY_VQGAN, module.TINY_CLIP


def tiny_configs() -> tuple[dict, dict]:
    """TINY_VQGAN and TINY_CLIP from tests/conftest.py (one source for the tiny models), copied."""
    return copy.deepcopy(_tiny_configs())


def f16_architecture() -> dict:
    from pixgen.models.registry import BUILTIN_REGISTRY, read_registry_file

    return copy.deepcopy(read_registry_file(BUILTIN_REGISTRY)["vqgan"][VQGAN_NAME].architecture)


def open_clip_model(ctx: Context, arch: str, seed: int = 0):
    """An open_clip model with random weights: the real ``arch`` or, with --smoke, the tiny test CLIP."""
    import open_clip

    torch.manual_seed(seed)
    if ctx.smoke:
        tiny = tiny_configs()[1]
        return open_clip.CLIP(**{k: v for k, v in tiny.items() if k != "preprocess_cfg"})
    import logging

    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(arch, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)


def tokenizer_for(ctx: Context, arch: str):
    import open_clip

    if ctx.smoke:
        return open_clip.SimpleTokenizer(context_length=tiny_configs()[1]["text_cfg"]["context_length"])
    return open_clip.get_tokenizer(arch)


@contextlib.contextmanager
def smoke_open_clip(ctx: Context):
    """With --smoke, open_clip.create_model/get_tokenizer give the tiny CLIP (for step_time.build)."""
    if not ctx.smoke:
        yield
        return
    import open_clip

    saved = open_clip.create_model, open_clip.get_tokenizer
    open_clip.create_model = lambda name, *a, **k: open_clip_model(ctx, name)
    open_clip.get_tokenizer = lambda name, *a, **k: tokenizer_for(ctx, name)
    try:
        yield
    finally:
        open_clip.create_model, open_clip.get_tokenizer = saved


@dataclass
class Base:
    """Random-weight models on the device, and the stock CLIP modules to build variants from."""

    vqgan: Any
    stock_clips: dict[str, Any]  # registry name -> open_clip module as created (never rewritten)

    def scorer(self, ctx: Context, name: str, rewrite: bool = True):
        """A CLIPScorer on a copy of the stock module; ``rewrite=False`` keeps open_clip's own attention."""
        from pixgen.models import inference
        from pixgen.models.clip import CLIPScorer
        from pixgen.models.factory import OPENAI_MEAN, OPENAI_STD

        model = copy.deepcopy(self.stock_clips[name])
        mean, std = OPENAI_MEAN, OPENAI_STD
        if ctx.smoke:
            preprocess = tiny_configs()[1]["preprocess_cfg"]
            mean, std = preprocess["mean"], preprocess["std"]
        saved = inference.fuse_self_attention
        if not rewrite:
            inference.fuse_self_attention = lambda model: 0
        try:
            scorer = CLIPScorer(model, tokenizer_for(ctx, OPEN_CLIP_ARCH[name]), name, mean, std)
        finally:
            inference.fuse_self_attention = saved
        return scorer.to(ctx.device)

    def models(self, ctx: Context, clips=(CLIP_B32,), copy_vqgan: bool = False, rewrite: bool = True):
        from pixgen.engine.loop import Models

        vqgan = copy.deepcopy(self.vqgan) if copy_vqgan else self.vqgan
        return Models(vqgan, [self.scorer(ctx, name, rewrite) for name in clips], ctx.device)


def build_base(ctx: Context, clips=(CLIP_B32,)) -> Base:
    from pixgen.models.vqgan import VQGAN, VQGANConfig

    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig.from_dict(ctx.vqgan_arch)).eval().requires_grad_(False).to(ctx.device)
    stock = {name: open_clip_model(ctx, OPEN_CLIP_ARCH[name], seed=i).eval().requires_grad_(False).to(ctx.device)
             for i, name in enumerate(clips)}
    return Base(vqgan, stock)


def run_config(ctx: Context, size, precision: str = "auto", clips=(CLIP_B32,), cut_count: int | None = None,
               preset: str = "imagenet"):
    """The RunConfig of ``preset`` (presets/*.yaml) at ``size`` with ``precision``, for in-process steps."""
    from pixgen.config import resolve_config

    width, height = (size, size) if isinstance(size, int) else size
    config = resolve_config(preset, None, [], {"prompt": PROMPT})
    return replace(config, size=[width, height], steps=1_000_000, seed=0, precision=precision, clip=list(clips),
                   cut_count=cut_count or ctx.plan.cut_count, device=str(ctx.device), save_every=0, gif=False)


# --- timing --------------------------------------------------------------------------------------

def time_interleaved(ctx: Context, steppers: dict[str, Any], warmup: int | None = None,
                     block: int | None = None, rounds: int | None = None) -> tuple[dict, bool]:
    """Per variant: warm up, then ``rounds`` blocks of ``block`` steps, round-robin over the variants,
    each block timed with CUDA events (host perf_counter on the CPU). Returns (stats, partial)."""
    plan = ctx.plan
    warmup, block, rounds = warmup or plan.warmup, block or plan.block, rounds or plan.rounds
    for step in steppers.values():
        for _ in range(warmup):
            step()
    ctx.sync()
    device_times: dict[str, list[float]] = {name: [] for name in steppers}
    host_times: dict[str, list[float]] = {name: [] for name in steppers}
    partial = False
    for index in range(rounds):
        if index >= 1 and ctx.left() < 0:
            partial = True
            break
        for name, step in steppers.items():
            host = time.perf_counter()
            if ctx.cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                for _ in range(block):
                    step()
                end.record()
                end.synchronize()
                device_times[name].append(begin.elapsed_time(end) / 1000 / block)
            else:
                for _ in range(block):
                    step()
                device_times[name].append((time.perf_counter() - host) / block)
            host_times[name].append((time.perf_counter() - host) / block)
    stats = {}
    for name, values in device_times.items():
        median = statistics.median(values)
        stats[name] = {"median_s": median, "min_s": min(values), "max_s": max(values), "blocks": len(values),
                       "steps_per_block": block, "it_s": 1 / median,
                       "host_median_s": statistics.median(host_times[name])}
    return stats, partial


def engine_stepper(config, models, around=contextlib.nullcontext):
    """One pixgen engine step per call (``next`` of :func:`pixgen.engine.loop.generate`), inside ``around()``."""
    from pixgen.engine.loop import generate

    steps = generate(config, models)

    def step():
        with around():
            return next(steps)
    return step


def count_syncs(step) -> dict:
    """Host syncs one call of ``step`` makes (CUDA sync debug mode), by the line that made them."""
    where: dict[str, int] = {}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for item in caught:
        if "synchroniz" in str(item.message):
            key = f"{Path(item.filename).name}:{item.lineno}"
            where[key] = where.get(key, 0) + 1
    return {"count": sum(where.values()), "where": where}


@contextlib.contextmanager
def patched(target, name: str, value):
    saved = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, saved)


@contextlib.contextmanager
def cudnn_benchmark():
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def device_noise_cutouts(device: torch.device):
    """pixgen's make_cutouts with its per-cut noise drawn on the device instead of on the CPU (a lever:
    the same distribution, another random stream, so not the same images as a CPU-drawn run)."""
    from pixgen.engine import cutouts

    generator = torch.Generator(device=device).manual_seed(0)

    def make_cutouts(image, spec, gen=None):
        cuts = cutouts.make_cutouts(image, replace(spec, noise=0.0), gen)
        if spec.noise > 0:
            scale = torch.rand(spec.cut_count, 1, 1, 1, device=cuts.device, generator=generator) * spec.noise
            cuts = cuts + torch.randn(cuts.shape, device=cuts.device, generator=generator, dtype=cuts.dtype) * scale
        return cuts
    return make_cutouts


def batched_clip_losses(clip_count: int):
    """pixgen's clip_losses, but one make_cutouts call draws every CLIP's cutouts of a step at once
    (a lever for runs with several CLIPs of one input size)."""
    from pixgen.engine import loop
    from pixgen.engine.ops import prompt_loss

    cache: dict[str, Any] = {}

    def clip_losses(image, clip, targets, spec, generator, cast=contextlib.nullcontext):
        if cache.get("image") is not image or not cache.get("cuts"):
            both = loop.make_cutouts(image, replace(spec, cut_count=spec.cut_count * clip_count), generator)
            cache.update(image=image, cuts=list(both.split(spec.cut_count)))
        embeds = clip.encode_image(cache["cuts"].pop(0), cast)
        return [prompt_loss(embeds, t.embedding, t.weight, t.stop) for t in targets]
    return clip_losses


def lever_rows(stats: dict, baseline: str, extra: dict | None = None) -> list[list[Any]]:
    base = stats[baseline]["median_s"]
    rows = []
    for name, s in stats.items():
        row = [name, s["median_s"] * 1000, s["it_s"], base / s["median_s"], s["host_median_s"] * 1000]
        rows.append(row + ([extra.get(name)] if extra is not None else []))
    return rows


# --- sections: in-process ------------------------------------------------------------------------

def section_environment(ctx: Context) -> dict:
    packages = {}
    for name in ("torch", "torchvision", "open_clip_torch", "taming-transformers-rom1504", "timm", "omegaconf",
                 "numpy", "pillow", "imageio", "imageio-ffmpeg", "click", "safetensors", "pytorch-lightning"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    data: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                            "torch_cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "packages": packages,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                            "cudnn_benchmark": torch.backends.cudnn.benchmark}
    try:
        data["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                            timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        data["git_commit"] = None
    rows = [["python", data["python"]], ["torch", packages["torch"]], ["CUDA (torch)", data["torch_cuda"]],
            ["cuDNN", data["cudnn"]], ["open_clip_torch", packages["open_clip_torch"]],
            ["taming-transformers-rom1504", packages["taming-transformers-rom1504"]],
            ["imageio-ffmpeg (MP4)", packages["imageio-ffmpeg"]], ["CPU cores", data["cpu_count"]],
            ["TF32 matmul / cuDNN", f"{data['tf32_matmul']} / {data['tf32_cudnn']}"],
            ["cudnn.benchmark (default)", data["cudnn_benchmark"]], ["commit", data["git_commit"]]]
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        data.update(device_name=props.name, total_memory=props.total_memory, sm_count=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}")
        try:
            data["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            data["nvidia_smi"] = f"unavailable ({err})"
        data["matmul_tflops"] = {}
        for dtype, n in ((torch.bfloat16, 8192), (torch.float32, 4096)):
            a, b = (torch.randn(n, n, device=ctx.device).to(dtype) for _ in range(2))
            for _ in range(3):
                a @ b
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(10):
                a @ b
            end.record()
            end.synchronize()
            data["matmul_tflops"][str(dtype)] = 2 * n**3 * 10 / (begin.elapsed_time(end) / 1000) / 1e12
            del a, b
        rows = [["GPU", f"{props.name} ({data['capability']}, {props.multi_processor_count} SMs, "
                        f"{props.total_memory / GIB:.1f} GiB)"], ["nvidia-smi", data["nvidia_smi"]],
                ["bf16 matmul 8192³ (TFLOP/s)", data["matmul_tflops"]["torch.bfloat16"]],
                ["fp32 matmul 4096³, TF32 off (TFLOP/s)", data["matmul_tflops"]["torch.float32"]]] + rows
        ctx.report.data["meta"]["device_name"] = props.name
    else:
        ctx.report.data["meta"]["device_name"] = f"CPU ({platform.processor() or platform.machine()}), smoke"
    return {"data": data, "tables": [table("Machine and software", ["what", "value"], rows)]}


def section_setup(ctx: Context) -> dict:
    """Checkpoints in the real formats, random weights, and the registry naming them."""
    import yaml
    from safetensors.torch import save_file

    from pixgen.models.vqgan import VQGAN, VQGANConfig

    folder = ctx.work / "models"
    folder.mkdir(parents=True, exist_ok=True)
    arch = ctx.vqgan_arch
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig.from_dict(arch))
    state = vqgan.state_dict()
    params = sum(v.numel() for v in state.values())
    # what a taming training checkpoint carries besides the generation weights: LPIPS (VGG16, ~14.7 M) and
    # discriminator (~2.8 M) weights, and Adam's two moments of every trained tensor
    extras = {"loss.logvar": torch.zeros(())}
    if ctx.smoke:
        extras["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 3, 3)
    else:
        extras["loss.perceptual_loss.net.slice.weight"] = torch.randn(14_710_464)
        extras["loss.discriminator.main.weight"] = torch.randn(2_765_633)
    trained = [v for v in state.values() if v.is_floating_point()]
    optimizer_states = [{"state": {i: {"step": torch.tensor(100.0), "exp_avg": torch.zeros_like(v),
                                       "exp_avg_sq": torch.zeros_like(v)} for i, v in enumerate(trained)},
                         "param_groups": [{"lr": 4.5e-6, "params": list(range(len(trained)))}]}]
    ckpt = folder / f"{VQGAN_NAME}.ckpt"
    lightning_save({"state_dict": {**state, **extras}, "optimizer_states": optimizer_states, "epoch": 3,
                    "global_step": 100, "pytorch-lightning_version": "1.0.8"}, ckpt)
    taming_yaml = {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                             "params": {"embed_dim": arch["embed_dim"], "n_embed": arch["n_embed"],
                                        "ddconfig": arch["ddconfig"],
                                        "lossconfig": {"target": "taming.modules.losses.vqperceptual."
                                                                 "VQLPIPSWithDiscriminator",
                                                       "params": {"disc_start": 250001}}}}}
    (folder / f"{VQGAN_NAME}.yaml").write_text(yaml.safe_dump(taming_yaml))
    del vqgan, state, optimizer_states, extras
    registry: dict[str, Any] = {
        "vqgan": {VQGAN_NAME: {"description": "random weights, taming Lightning .ckpt + YAML (gpu check)",
                               "architecture": arch, "bundled": {"path": ckpt.name}}},
        "clip": {}}
    rows = [[VQGAN_NAME, ckpt.name, ckpt.stat().st_size / 1e6, params / 1e6]]
    for index, name in enumerate((CLIP_B32, CLIP_B16)):
        model = open_clip_model(ctx, OPEN_CLIP_ARCH[name], seed=index)
        clip_state = {k: v.contiguous() for k, v in model.state_dict().items()}
        path = folder / f"{name}.safetensors"  # what pixgen keeps of an open_clip_model.safetensors download
        save_file(clip_state, path)
        entry: dict[str, Any] = {"description": "random weights, open_clip state dict (gpu check)",
                                 "bundled": {"path": path.name}}
        if ctx.smoke:
            (folder / f"{name}.json").write_text(json.dumps(tiny_configs()[1]))
            entry["config"] = f"{name}.json"
        else:
            entry.update(model=OPEN_CLIP_ARCH[name], pretrained="openai")
        registry["clip"][name] = entry
        rows.append([name, path.name, path.stat().st_size / 1e6, sum(v.numel() for v in clip_state.values()) / 1e6])
        del model, clip_state
    registry_path = folder / "registry.yaml"
    registry_path.write_text(yaml.safe_dump(registry, sort_keys=False))
    ctx.files.update(registry=registry_path, ckpt=ckpt, folder=folder)
    if ctx.smoke:  # in-process sections read the tiny VQGAN from it (step_time.build)
        os.environ["PIXGEN_REGISTRY"] = str(registry_path)
    return {"data": {"registry": str(registry_path), "file_bytes": {row[1]: round(row[2] * 1e6) for row in rows}},
            "notes": ["Registered through PIXGEN_REGISTRY under the built-in names, so `-p imagenet` and "
                      "`-p quality` load them. A user's downloaded VQGAN is a slim fp16 safetensors copy "
                      "(pixgen models download), so these runs load more bytes than a user's would."],
            "tables": [table("Checkpoints written (random weights)", ["model", "file", "MB", "M params"], rows)]}


def lightning_save(obj: dict, path: Path) -> None:
    """torch.save with Lightning's ModelCheckpoint callback state pickled in, as taming's .ckpt files
    have it (a stand-in class of the same name: Lightning itself is not imported)."""
    import types

    module = types.ModuleType(LIGHTNING_CLASS)

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = LIGHTNING_CLASS
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    saved = sys.modules.get(LIGHTNING_CLASS)
    sys.modules[LIGHTNING_CLASS] = module
    try:
        torch.save({**obj, "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}}}, path)
    finally:
        if saved is None:
            del sys.modules[LIGHTNING_CLASS]
        else:
            sys.modules[LIGHTNING_CLASS] = saved


def section_step_time(ctx: Context) -> dict:
    """pixgen's engine step against the reference loop, via benchmarks/step_time.py's build()."""
    import step_time

    from pixgen.engine.loop import run_precision

    rows, data, notes = [], {}, []
    partial = False
    for size in ctx.plan.step_sizes:
        if ctx.left() < 0:
            partial = True
            notes.append(f"{size}²: not measured, the section's time ran out")
            continue
        with smoke_open_clip(ctx):
            built = step_time.build(ctx.device, step_time.VARIANTS, size, ctx.plan.cut_count)
        steppers = built["steppers"]
        precision = run_precision("auto", ctx.device, built["vqgan"])
        for step in steppers.values():  # the first step also embeds the prompt: keep it out of the FLOPs
            step()
        flops = {name: step_time.step_flops(step) for name, step in steppers.items()}
        stats, cut = time_interleaved(ctx, steppers)
        partial |= cut
        reference = stats["reference"]["median_s"]
        precisions = {"pixgen-default": precision, "pixgen-fp32": "fp32", "reference": "fp32"}
        for name, s in stats.items():
            tflops = flops[name] / s["median_s"] / 1e12
            rows.append([size, name, precisions[name], s["median_s"] * 1000, s["it_s"], reference / s["median_s"],
                         flops[name] / 1e9, tflops, s["host_median_s"] * 1000, s["blocks"] * s["steps_per_block"]])
        data[str(size)] = {"stats": stats, "flops": flops, "default_precision": precision}
        del built, steppers
        cleanup()
    notes.append("step_time.build's config: no cutout noise and no rotation (the imagenet preset adds both: the "
                 "levers section's baseline uses the preset). Reference = benchmarks/reference_loop.py "
                 "(generate.py family, fp32, stock open_clip). Speed-up = reference time / variant time.")
    return {"data": data, "partial": partial, "notes": notes, "tables": [table(
        f"Step time, f16 16384 VQGAN + ViT-B/32, {ctx.plan.cut_count} cutouts, Adam, interleaved",
        ["size", "variant", "precision", "ms/step", "it/s", "speed-up vs reference", "GFLOP/step", "TFLOP/s",
         "host ms/step", "steps timed"], rows)]}


def section_grad_cosine(ctx: Context) -> dict:
    """Cosine between one step's gradient of z in bf16 (and TF32 fp32) and in strict fp32."""
    from pixgen.engine.inits import INIT_METHODS
    from pixgen.engine.loop import cutout_spec, embed_targets, latent_grid, run_prompts, seed_everything
    from pixgen.models.inference import prepare_for_device

    base = build_base(ctx)
    models = base.models(ctx)
    clip = models.clips[0]
    rows, data = [], {}
    for size in ctx.plan.step_sizes:
        config = run_config(ctx, size, "fp32")
        prepare_for_device(models.vqgan, ctx.device, "bf16")
        targets = embed_targets(clip, run_prompts(config, models.clips), {})
        spec = cutout_spec(config, clip)
        for seed in (0, 1):
            generator = seed_everything(seed)
            z0 = INIT_METHODS["random"](models.vqgan, latent_grid(config.size, models.vqgan), generator).to(
                ctx.device).float()
            state = generator.get_state()
            one_step = (ctx, models, targets, spec, generator, state, z0)
            reference, ref_loss = z_gradient(*one_step, "fp32", True)
            for label, precision, strict in (("fp32 again (strict)", "fp32", True),
                                             ("fp32 (TF32 as torch defaults)", "fp32", False),
                                             ("bf16 autocast (pixgen's CUDA default)", "bf16", False)):
                grad, loss = z_gradient(*one_step, precision, strict)
                cosine = float(F.cosine_similarity(grad, reference, dim=0))
                relative = float((grad - reference).norm() / reference.norm())
                rows.append([size, seed, label, cosine, relative, loss - ref_loss, cosine >= 0.99])
                data[f"{size}/{seed}/{label}"] = {"cosine": cosine, "relative_error": relative}
            ctx.sync()
    bf16 = [r[3] for r in rows if r[2].startswith("bf16")]
    return {"data": {**data, "bf16_min_cosine": min(bf16) if bf16 else None}, "tables": [table(
        "Gradient of z after one step against strict fp32 (TF32 off), same cutouts and noise",
        ["size", "seed", "variant", "cosine", "relative error", "loss - fp32 loss", "≥ 0.99"], rows)],
        "notes": ["Random weights: real CLIP weights give other gradients; the target of issue #26 is cosine ≥ 0.99. "
                  "'fp32 again' is the floor set by non-deterministic kernels (grid_sample backward uses atomics)."]}


def z_gradient(ctx: Context, models, targets, spec, generator, state, z0, precision: str, strict: bool):
    """The gradient of z of one step from ``z0`` and generator ``state`` in ``precision``; ``strict``: TF32 off."""
    from pixgen.engine.loop import autocast_factory, clip_losses, synth

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False if strict else tf32[0]
    torch.backends.cudnn.allow_tf32 = False if strict else tf32[1]
    try:
        generator.set_state(state)
        z = z0.clone().requires_grad_(True)
        cast = autocast_factory(ctx.device, precision)
        image = synth(z, models.vqgan, cast)
        loss = sum(clip_losses(image, models.clips[0], targets, spec, generator, cast))
        loss.backward()
        return z.grad.detach().flatten().double(), float(loss)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def section_vram(ctx: Context) -> dict:
    """Peak VRAM of a step per size and precision, against pixgen's pre-flight estimate."""
    from pixgen.pipeline.memory import available_bytes, estimate_step_bytes

    base = build_base(ctx)
    models = base.models(ctx)
    rows, measured, partial = [], {"bf16": [], "fp32": []}, False
    for precision in ("bf16", "fp32"):
        for size in ctx.plan.vram_sizes:
            if ctx.left() < 0:
                partial = True
                rows.append([size, precision] + [None] * 7 + ["not measured: the section's time ran out"])
                continue
            config = run_config(ctx, size, precision)
            estimate = estimate_step_bytes(config, models)
            cleanup()
            before = memory_now(ctx)
            free = available_bytes(ctx.device)
            steps = engine_stepper(config, models)
            try:
                steps()  # setup + first step
                ctx.sync()
                start = time.perf_counter()
                steps()
                ctx.sync()
                seconds = time.perf_counter() - start
                peak, reserved = memory_peak(ctx)
                step_bytes = peak - before
                measured[precision].append((size, reserved if ctx.cuda else peak))
                rows.append([size, precision, peak / GIB, reserved / GIB if reserved else None, step_bytes / GIB,
                             estimate / GIB, step_bytes / estimate, estimate > (free or math.inf), seconds, ""])
            except Exception as err:  # noqa: BLE001 - an out-of-memory at one size is a result, not a failure
                from pixgen.pipeline.memory import is_out_of_memory

                if not is_out_of_memory(err):
                    raise
                rows.append([size, precision, None, None, None, estimate / GIB, None,
                             estimate > (free or math.inf), None, "out of memory"])
            finally:
                del steps
                cleanup()
    fits = largest_sizes(measured, ctx)
    fit_rows = [[precision, *[fits[precision].get(str(c)) for c in CARDS_GIB], fits[precision].get("model")]
                for precision in fits]
    note = ("Peak = torch.cuda.max_memory_allocated over a run's setup and first two steps; step GiB = peak minus "
            "what was allocated before the run (the weights), which is what pixgen's pre-flight estimate "
            "(pixgen/pipeline/memory.py estimate_step_bytes) stands for; pre-flight refuses a run when the estimate "
            "exceeds the free memory. s/step = the second step, host-timed.")
    if not ctx.cuda:
        note = ("On the CPU (smoke) the peak is the process's VmHWM after resetting it (/proc/self/clear_refs), "
                "so only the code path is exercised.")
    del base, models
    return {"data": {"measured": measured, "largest": fits}, "partial": partial, "notes": [note, (
        f"Largest square: a + b·pixels + c·pixels² fitted (least squares, c ≥ 0) to the measured peak reserved "
        f"bytes, solved for each card size less {CONTEXT_GIB} GiB for the CUDA context, rounded down to a multiple "
        f"of 16; beyond 2048² it is an extrapolation. Published anchor (generate.py family, DESIGN.md): 24 GB → "
        f"about 900², 10 GB → 512², 8 GB → 380².")], "tables": [
        table(f"Peak memory of one step, ViT-B/32, {ctx.plan.cut_count} cutouts",
              ["size", "precision", "peak GiB", "peak reserved GiB", "step GiB", "estimate GiB",
               "measured / estimate", "pre-flight would refuse", "s/step", "note"], rows),
        table("Largest square size that fits (extrapolated)",
              ["precision", *[f"{c} GiB" for c in CARDS_GIB], "fit (bytes = a + b·p + c·p²)"], fit_rows)]}


def memory_now(ctx: Context) -> int:
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return proc_status("VmRSS")


def memory_peak(ctx: Context) -> tuple[int, int | None]:
    if ctx.cuda:
        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    return proc_status("VmHWM"), None


def proc_status(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def largest_sizes(measured: dict[str, list[tuple[int, int]]], ctx: Context) -> dict:
    """Per precision: the fit of peak bytes over pixels and the largest square for each card size."""
    import numpy as np

    out = {}
    for precision, points in measured.items():
        if len(points) < 2:
            out[precision] = {"model": "too few sizes measured"}
            continue
        pixels = np.array([s * s for s, _ in points], dtype=np.float64)
        peaks = np.array([b for _, b in points], dtype=np.float64)
        coeffs = None
        if len(points) >= 4:
            a, b, c = np.linalg.lstsq(np.stack([np.ones_like(pixels), pixels, pixels**2], 1), peaks, rcond=None)[0]
            if c >= 0 and b >= 0:
                coeffs = (a, b, c)
        if coeffs is None:
            a, b = np.linalg.lstsq(np.stack([np.ones_like(pixels), pixels], 1), peaks, rcond=None)[0]
            coeffs = (a, b, 0.0)
        a, b, c = coeffs
        result: dict[str, Any] = {"model": f"a={a / GIB:.2f} GiB, b={b / 1024:.1f} KiB/px, c={c:.3g} B/px²"}
        for card in CARDS_GIB:
            limit = (card - CONTEXT_GIB) * GIB
            best = None
            for side in range(16, 32768, 16):
                p = side * side
                if a + b * p + c * p * p > limit:
                    break
                best = side
            result[str(card)] = best
        out[precision] = result
    return out


def section_levers(ctx: Context) -> dict:
    """Each lever against pixgen's CUDA defaults on the imagenet preset's step, interleaved."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pixgen.engine import loop
    from pixgen.models import inference

    size = ctx.plan.lever_size
    base = build_base(ctx, clips=(CLIP_B32, CLIP_B16))
    auto = run_config(ctx, size, "auto")
    fp32 = run_config(ctx, size, "fp32")
    shared = base.models(ctx)
    noise = device_noise_cutouts(ctx.device) if ctx.cuda else None

    def combined():
        stack = contextlib.ExitStack()
        stack.enter_context(cudnn_benchmark())
        if noise is not None:
            stack.enter_context(patched(loop, "make_cutouts", noise))
        return stack

    variants = {
        "baseline: pixgen on CUDA (bf16 autocast, channels-last decoder, SDPA attention)":
            engine_stepper(auto, shared),
        "fp32 (no autocast)": engine_stepper(fp32, base.models(ctx, copy_vqgan=True)),
        "decoder channels-first (no channels_last)": engine_stepper(
            auto, base.models(ctx, copy_vqgan=True),
            lambda: patched(inference, "decoder_layout", lambda device, precision: torch.contiguous_format)),
        "stock open_clip attention (nn.MultiheadAttention)": engine_stepper(auto, base.models(ctx, rewrite=False)),
        "SDPA math backend only (no fused kernel)": engine_stepper(auto, base.models(ctx),
                                                                   lambda: sdpa_kernel(SDPBackend.MATH)),
        "cudnn.benchmark = True": engine_stepper(auto, base.models(ctx), cudnn_benchmark),
    }
    if noise is not None:
        variants["cutout noise drawn on the GPU (no CPU randn + copy)"] = engine_stepper(
            auto, base.models(ctx), lambda: patched(loop, "make_cutouts", noise))
    variants["cudnn.benchmark + noise on the GPU"] = engine_stepper(auto, base.models(ctx), combined)
    baseline = next(iter(variants))
    stats, partial = time_interleaved(ctx, variants)
    syncs = {}
    if ctx.cuda:
        for name in (baseline, "cutout noise drawn on the GPU (no CPU randn + copy)"):
            syncs[name] = count_syncs(variants[name])
    sync_column = {name: s["count"] for name, s in syncs.items()} if ctx.cuda else None
    tables = [table(f"Levers on one step at {size}², imagenet preset (ViT-B/32, {ctx.plan.cut_count} cutouts, "
                    "noise 0.1, rotate 5)", ["variant", "ms/step", "it/s", "speed-up vs baseline", "host ms/step"]
                    + (["host syncs/step"] if sync_column is not None else []),
                    lever_rows(stats, baseline, sync_column))]
    del variants, shared
    cleanup()

    two = {}
    if ctx.left() > 0:
        quality = run_config(ctx, ctx.plan.two_clip_size, "auto", clips=(CLIP_B32, CLIP_B16),
                             cut_count=ctx.plan.two_clip_cuts, preset="quality")
        two_variants = {
            "per-CLIP cutouts (pixgen)": engine_stepper(quality, base.models(ctx, clips=(CLIP_B32, CLIP_B16))),
            "one cutout batch for both CLIPs": engine_stepper(
                quality, base.models(ctx, clips=(CLIP_B32, CLIP_B16)),
                lambda: patched(loop, "clip_losses", batched_clip_losses(2))),
        }
        two, cut = time_interleaved(ctx, two_variants, rounds=max(2, ctx.plan.rounds // 2))
        partial |= cut
        w, h = ctx.plan.two_clip_size
        tables.append(table(f"Two CLIPs (quality preset: {w}x{h}, ViT-B/32 + ViT-B/16, {ctx.plan.two_clip_cuts} "
                            "cutouts each)", ["variant", "ms/step", "it/s", "speed-up vs baseline", "host ms/step"],
                            lever_rows(two, "per-CLIP cutouts (pixgen)")))
        del two_variants
    else:
        partial = True
    del base
    notes = [
        "The baseline is what pixgen does on CUDA today: precision auto = bf16 autocast around decoder and CLIP, the "
        "decoder channels-last (pixgen.models.inference.decoder_layout), open_clip attention rewritten to one "
        "qkv projection + scaled_dot_product_attention. Levers are applied by config keys or by patching pixgen's "
        "functions inside this script only.",
        "Not the same images: fp32 (other rounding), noise on the GPU and the one cutout batch (other random "
        "streams), cudnn.benchmark (may pick non-deterministic kernels). The others compute the same function.",
        "torch.compile (mode reduce-overhead, i.e. CUDA graphs) is measured in its own process: section `compile`.",
    ]
    if ctx.cuda:
        notes.append("Host syncs per step counted with torch.cuda.set_sync_debug_mode('warn'): "
                     + "; ".join(f"{name.split(':')[0]}: {s['count']} {s['where'] or ''}" for name, s in syncs.items()))
    return {"data": {"stats": stats, "two_clips": two, "syncs": syncs}, "partial": partial, "notes": notes,
            "tables": tables}


# --- torch.compile, in a child process with a hard timeout ---------------------------------------

def compile_child(args: argparse.Namespace) -> None:
    """Eager vs torch.compile'd decoder and CLIP image tower on the imagenet step; prints one JSON line."""
    ctx = make_context(args, Report(Path(args.out), {}), budget=1e9)
    ctx.deadline = time.monotonic() + 1e9
    try:
        compile_steps(ctx)
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)


def compile_steps(ctx: Context) -> None:
    from pixgen.engine.loop import Models

    size = ctx.plan.lever_size
    base = build_base(ctx)
    config = run_config(ctx, size, "auto")
    eager = base.models(ctx, copy_vqgan=True)
    compiled = base.models(ctx, copy_vqgan=True)
    mode = None if ctx.smoke else "reduce-overhead"
    backend = "eager" if ctx.smoke else "inductor"
    compiled.vqgan.decoder = torch.compile(compiled.vqgan.decoder, mode=mode, backend=backend, dynamic=False)
    for clip in compiled.clips:
        clip.model.visual = torch.compile(clip.model.visual, mode=mode, backend=backend, dynamic=False)
    compiled = Models(compiled.vqgan, compiled.clips, ctx.device)
    result: dict[str, Any] = {"mode": mode, "backend": backend, "size": size}
    inner = engine_stepper(config, compiled)

    def compiled_step():
        if ctx.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        return inner()

    start = time.perf_counter()
    compiled_step()
    ctx.sync()
    result["first_step_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(3):  # cudagraph trees record on the first runs after compiling
        compiled_step()
    ctx.sync()
    result["next_3_steps_s"] = time.perf_counter() - start
    steppers = {"eager (pixgen as is)": engine_stepper(config, eager),
                f"torch.compile {mode or backend}": compiled_step}
    stats, _ = time_interleaved(ctx, steppers, rounds=ctx.plan.compile_rounds)
    result["stats"] = stats
    print("GPU_CHECK_RESULT " + json.dumps(result), flush=True)


def section_compile(ctx: Context) -> dict:
    out = ctx.work / "compile"
    out.mkdir(exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "compile", "--out", str(out),
               "--device", str(ctx.device)] + (["--smoke"] if ctx.smoke else [])
    timeout = max(ctx.left(), 10)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ctx.child_env(), cwd=ctx.work)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        ctx.report.log(f"[compile] timed out after {timeout:.0f} s; output tail:\n{output[-4000:]}")
        return {"partial": True, "data": {"timed_out_s": timeout},
                "notes": [f"Stopped after {timeout:.0f} s (the section's budget) before it finished: compiling took "
                          "longer than the time left. Rerun with --only compile and a larger --budget."]}
    ctx.report.log(f"[compile] exit {proc.returncode} after {time.perf_counter() - start:.1f} s; output tail:\n"
                   f"{output[-4000:]}")
    line = next((x for x in reversed(output.splitlines()) if x.startswith("GPU_CHECK_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"compile child exited {proc.returncode}: {last_error_line(output)}")
    result = json.loads(line.removeprefix("GPU_CHECK_RESULT "))
    stats = result["stats"]
    eager = next(iter(stats))
    return {"data": result, "tables": [table(
        f"torch.compile of the decoder and the CLIP image tower, {result['size']}², imagenet preset, bf16",
        ["variant", "ms/step", "it/s", "speed-up vs eager", "host ms/step"], lever_rows(stats, eager))],
        "notes": [f"First compiled step (compiling) {result['first_step_s']:.1f} s; the next 3 steps (CUDA-graph "
                  f"recording) {result['next_3_steps_s']:.1f} s. Compile cost is paid per process and per shape.",
                  *(["--smoke: backend 'eager' (no inductor), only the code path is exercised."] if ctx.smoke
                    else [])]}


def last_error_line(output: str) -> str:
    lines = [x for x in output.strip().splitlines() if x.strip()]
    errors = [x for x in lines if re.match(r"^\w*(Error|Exception)\b|^\w+\.\w+Error|^Error", x.strip())]
    return (errors or lines or ["no output"])[-1][:400]


# --- whole pixgen processes ----------------------------------------------------------------------

# Runs pixgen's CLI as `python3 -m pixgen` does, adding only: step timestamps (a wrapper around
# pixgen.engine.loop.generate), torch.cuda.max_memory_allocated at exit, optional deterministic
# algorithms, and (where imageio-ffmpeg is missing) skipping the MP4 of an animation.
BOOT = r'''
import atexit, json, os, sys, time
_hook = {"t_start": time.time(), "generate": []}
def _write():
    try:
        import torch
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            _hook["max_allocated"] = torch.cuda.max_memory_allocated()
            _hook["max_reserved"] = torch.cuda.max_memory_reserved()
    except Exception as err:
        _hook["cuda_error"] = repr(err)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                _hook["vmhwm"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    _hook["t_exit"] = time.time()
    with open(os.environ["GPU_CHECK_HOOK"], "w") as handle:
        json.dump(_hook, handle)
atexit.register(_write)
_mode = os.environ.get("GPU_CHECK_DETERMINISTIC")
if _mode:
    import torch
    torch.use_deterministic_algorithms(True, warn_only=_mode == "warn")
import pixgen.engine.loop as _loop
_generate = _loop.generate
def _timed_generate(*args, **kwargs):
    run = {"steps": 0, "t_first": None, "t_last": None}
    _hook["generate"].append(run)
    inner = _generate(*args, **kwargs)
    try:
        for step in inner:
            now = time.time()
            run["t_first"] = run["t_first"] or now
            run["t_last"] = now
            run["steps"] += 1
            yield step
    finally:
        inner.close()
_loop.generate = _timed_generate
if os.environ.get("GPU_CHECK_NO_VIDEO") == "1":
    import pixgen.animation.animate as _animate
    _animate.save_video = lambda path, frames, fps: _hook.__setitem__("video_skipped", str(path))
import runpy
sys.argv = ["pixgen", *sys.argv[1:]]
runpy.run_module("pixgen", run_name="__main__", alter_sys=True)
'''


class VramPoller(threading.Thread):
    """Device memory in use (all processes: total - free), polled every 0.1 s, less what was in use before."""

    def __init__(self, ctx: Context):
        super().__init__(daemon=True)
        self.enabled = ctx.cuda
        self.stop_event = threading.Event()
        self.baseline = self.peak = self._used() if self.enabled else 0

    def _used(self) -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free

    def run(self) -> None:
        while self.enabled and not self.stop_event.wait(0.1):
            self.peak = max(self.peak, self._used())

    def finish(self) -> int | None:
        self.stop_event.set()
        if self.enabled:
            self.join(1)
            return self.peak - self.baseline
        return None


class ProcessFailed(RuntimeError):
    """A pixgen process exited non-zero or ran out of time; ``output`` is what it printed."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


def pixgen_process(ctx: Context, name: str, args: list[str], *, literal: bool = False, cwd: Path | None = None,
                   timeout: float | None = None, **env: str) -> dict:
    """Run pixgen's CLI in a fresh process; wall time from launch to exit, step timestamps, peak memory."""
    hook = ctx.work / f"{name}.hook.json"
    hook.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pixgen", *args] if literal else [sys.executable, "-c", BOOT, *args]
    timeout = timeout if timeout is not None else max(ctx.left(), 5)
    cleanup()
    poller = VramPoller(ctx)
    poller.start()
    launched = time.time()
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ctx.child_env(GPU_CHECK_HOOK=str(hook), **env), cwd=cwd or ctx.work)
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - start
    polled = poller.finish()
    shown = " ".join(a if len(a) < 80 else a[:40] + "…" for a in (command[:2] + ["<BOOT>"] + command[3:]
                                                                   if not literal else command))
    ctx.report.log(f"[{name}] $ {shown}\n  exit {proc.returncode} in {wall:.1f} s\n"
                   + "\n".join("  " + x for x in clean_output(output)[-40:]))
    result: dict[str, Any] = {"wall_s": wall, "returncode": proc.returncode, "timed_out": timed_out,
                              "device_used_delta": polled, "loaded": loaded_lines(output)}
    if hook.exists():
        data = json.loads(hook.read_text())
        runs = [r for r in data.get("generate", []) if r["steps"]]
        result.update(max_allocated=data.get("max_allocated"), max_reserved=data.get("max_reserved"),
                      vmhwm=data.get("vmhwm"), video_skipped=data.get("video_skipped"))
        if runs:
            steps = sum(r["steps"] for r in runs)
            stepping = sum(r["t_last"] - r["t_first"] for r in runs)
            result.update(steps=steps, generate_calls=len(runs), startup_s=runs[0]["t_first"] - launched,
                          after_last_step_s=data["t_exit"] - runs[-1]["t_last"] if "t_exit" in data else None,
                          it_s=(steps - len(runs)) / stepping if stepping > 0 else None)
    else:
        result.update(tqdm_rate(output))
    if timed_out:
        raise ProcessFailed(f"{name}: stopped after {timeout:.0f} s (the section's time ran out)", output)
    if proc.returncode != 0:
        raise ProcessFailed(f"{name}: exit {proc.returncode}: {last_error_line(output)}", output)
    result["output"] = output
    return result


def clean_output(output: str) -> list[str]:
    """Output lines with tqdm's carriage-return redraws reduced to their last state."""
    return [line.split("\r")[-1] for line in output.splitlines() if line.split("\r")[-1].strip()]


def loaded_lines(output: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"loaded (\S+) in ([\d.]+) s", output)}


def tqdm_rate(output: str) -> dict:
    matches = re.findall(r"(\d+)/(\d+) \[[^\]]*?([\d.]+)(step/s|s/step)", output)
    if not matches:
        return {}
    done, _total, rate, unit = matches[-1]
    return {"steps": int(done), "it_s": float(rate) if unit == "step/s" else 1 / float(rate),
            "it_s_source": "tqdm"}


def gib(value: float | None) -> float | None:
    return None if value is None else value / GIB


def run_row(label: str, r: dict) -> list[Any]:
    return [label, r["wall_s"], r.get("startup_s"), r.get("steps"), r.get("it_s"), r.get("after_last_step_s"),
            gib(r.get("max_allocated")), gib(r.get("max_reserved")), gib(r.get("device_used_delta")),
            gib(r.get("vmhwm")), ", ".join(f"{k} {v:.1f} s" for k, v in r.get("loaded", {}).items())]


RUN_COLUMNS = ["run", "wall s (launch to exit)", "s to first step", "steps", "it/s (steps 2..N)",
               "s after last step", "peak allocated GiB", "peak reserved GiB", "device use GiB (polled)",
               "peak RSS GiB", "model loading (pixgen's own lines)"]


def device_flag(ctx: Context) -> list[str]:
    return ["--device", "cuda" if ctx.cuda else "cpu"]


def need_setup(ctx: Context) -> None:
    if "registry" not in ctx.files:
        raise RuntimeError("the setup section did not write the checkpoints and registry")


def section_runs(ctx: Context) -> dict:
    need_setup(ctx)
    rows, data, notes = [], {}, []
    for preset in ("imagenet", "quality"):
        if ctx.left() < 10:
            notes.append(f"{preset}: not run, the section's time ran out")
            continue
        args = ["run", PROMPT, "-p", preset, "--seed", "0", *device_flag(ctx), "-o",
                str(ctx.work / "runs" / preset), *ctx.plan.run_flags]
        try:
            result = pixgen_process(ctx, f"run-{preset}", args)
        except ProcessFailed as err:
            notes.append(str(err))
            continue
        result.pop("output", None)
        data[preset] = result
        rows.append(run_row(f"pixgen run -p {preset}", result))
    if not data:
        raise RuntimeError("; ".join(notes) or "no run finished")
    notes.append("Wall time includes interpreter start, imports, hashing and loading the checkpoints (1 GB .ckpt "
                 "+ 0.6 GB per CLIP), CUDA start, every step, the progress frames and state saves the preset asks "
                 "for, the final PNG/GIF, and exit. it/s counts steps 2..N from pixgen's own step timestamps.")
    return {"data": data, "partial": len(data) < 2, "notes": notes,
            "tables": [table("Whole `pixgen run` processes, random-weight checkpoints in the real formats",
                             RUN_COLUMNS, rows)]}


def section_default_run(ctx: Context) -> dict:
    folder = ctx.work / "default"
    folder.mkdir(exist_ok=True)
    args = ["run", DEFAULT_PROMPT, "--seed", "0", *device_flag(ctx), *ctx.plan.default_flags]
    result = pixgen_process(ctx, "default-run", args, literal=True, cwd=folder)
    images = sorted(folder.glob("outputs/*/image.png"))
    result.pop("output", None)
    result["image"] = str(images[0]) if images else None
    return {"data": result, "notes": [
        f"Exactly `python3 -m pixgen {shlex.join(args)}` (bundled shapes-world models, default preset), "
        "from a fresh folder; it/s from the progress bar's last reading; device use from polling."],
        "tables": [table("Default run on the bundled models", RUN_COLUMNS, [run_row("default preset", result)])]}


def section_determinism(ctx: Context) -> dict:
    import numpy as np
    from PIL import Image

    need_setup(ctx)
    flags = list(ctx.plan.run_flags)
    if "--steps" in flags:  # smoke: det_steps decides
        index = flags.index("--steps")
        del flags[index:index + 2]
    args = ["run", PROMPT, "-p", "imagenet", "--seed", "0", *device_flag(ctx), "--steps", str(ctx.plan.det_steps),
            "--save-every", "0", "--no-gif", *flags]
    strict = {"GPU_CHECK_DETERMINISTIC": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    rows, data, notes = [], {}, []

    def pair(label: str, tag: str, env: dict[str, str]) -> list[Path]:
        images = []
        for index in range(2):
            if ctx.left() < 5:
                raise ProcessFailed("the section's time ran out")
            folder = ctx.work / "determinism" / f"{tag}-{index}"
            pixgen_process(ctx, f"det-{tag}-{index}", [*args, "-o", str(folder)], **env)
            images.append(folder / "image.png")
        return images

    for label, tag, env in (("default", "default", {}), ("deterministic algorithms", "strict", strict)):
        try:
            try:
                images = pair(label, tag, env)
            except ProcessFailed as err:
                if tag != "strict" or "deterministic" not in err.output.replace("use_deterministic", ""):
                    raise
                notes.append(f"torch.use_deterministic_algorithms(True) stopped the run: {err}. The pair ran again "
                             "with warn_only=True (non-deterministic ops allowed, with a warning).")
                rows.append([label, None, None, None, str(err)])
                label, tag = "deterministic algorithms, warn_only", "warn"
                images = pair(label, tag, {**env, "GPU_CHECK_DETERMINISTIC": "warn"})
        except ProcessFailed as err:
            rows.append([label, None, None, None, str(err)])
            continue
        same_bytes = images[0].read_bytes() == images[1].read_bytes()
        a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in images)
        diff = np.abs(a - b)
        result = {"same_bytes": same_bytes, "max_pixel_diff": int(diff.max()),
                  "fraction_pixels_differing": float((diff.max(axis=2) > 0).mean())}
        rows.append([label, same_bytes, result["max_pixel_diff"], result["fraction_pixels_differing"], ""])
        data[label] = result
    if not data:
        raise RuntimeError("; ".join(str(r[-1]) for r in rows))
    notes.append(f"Each pair: the imagenet preset, seed 0, {ctx.plan.det_steps} steps, two separate processes, PNG "
                 "bytes and decoded pixels compared. The deterministic pair sets CUBLAS_WORKSPACE_CONFIG=:4096:8 and "
                 "calls torch.use_deterministic_algorithms(True) before pixgen starts.")
    return {"data": data, "partial": len(data) < 2, "notes": notes, "tables": [table(
        "Same seed twice on this device", ["pair", "same bytes", "max pixel difference (0-255)",
                                           "fraction of pixels differing", "error"], rows)]}


def section_batch(ctx: Context) -> dict:
    import yaml

    need_setup(ctx)
    plan = ctx.plan
    defaults: dict[str, Any] = {"preset": "imagenet", "prompt": PROMPT, "steps": plan.batch_steps}
    if ctx.smoke:
        defaults.update(size=[32, 32], cut_count=2)
    manifest = ctx.work / "batch.yaml"
    manifest.write_text(yaml.safe_dump({"defaults": defaults, "matrix": {"seed": list(range(plan.batch_jobs))}}))
    devices = ("cuda:0", "cuda:0,cuda:0") if ctx.cuda else ("cpu", "cpu,cpu")
    rows, data, notes = [], {}, []
    for index, spec in enumerate(devices):
        if ctx.left() < 10:
            notes.append(f"--devices {spec}: not run, the section's time ran out")
            continue
        folder = ctx.work / "batch" / f"devices-{index}"
        try:
            result = pixgen_process(ctx, f"batch-{index}", ["batch", str(manifest), "-o", str(folder), "--devices",
                                                           spec, "-q"])
        except ProcessFailed as err:
            notes.append(str(err))
            continue
        result.pop("output", None)
        seconds = [json.loads(line).get("seconds") for line in (folder / "batch.jsonl").read_text().splitlines()
                   if line.strip() and json.loads(line).get("seconds") is not None]
        done = len(list(folder.glob("*/image.png")))
        result.update(jobs_done=done, jobs_per_minute=done / result["wall_s"] * 60,
                      job_seconds_median=statistics.median(seconds) if seconds else None)
        data[spec] = result
        rows.append([f"--devices {spec}", done, result["wall_s"], result["jobs_per_minute"],
                     result["job_seconds_median"], gib(result.get("device_used_delta"))])
    if not data:
        raise RuntimeError("; ".join(notes) or "no batch finished")
    notes.append(f"{plan.batch_jobs} jobs: the imagenet preset with {plan.batch_steps} steps each (seeds 0-"
                 f"{plan.batch_jobs - 1}); jobs/minute from the whole process's wall time (worker start and model "
                 "loading included); job seconds from batch.jsonl.")
    return {"data": data, "partial": len(data) < 2, "notes": notes, "tables": [table(
        "pixgen batch", ["devices", "jobs done", "wall s", "jobs/minute", "median s per job (batch.jsonl)",
                         "device use GiB (polled)"], rows)]}


def section_animation(ctx: Context) -> dict:
    need_setup(ctx)
    no_video = importlib.util.find_spec("imageio_ffmpeg") is None
    folder = ctx.work / "animation"
    args = ["animate", PROMPT, "-p", "imagenet", "--seed", "0", *device_flag(ctx), "-o", str(folder),
            *ctx.plan.anim_flags]
    result = pixgen_process(ctx, "animation", args, **({"GPU_CHECK_NO_VIDEO": "1"} if no_video else {}))
    result.pop("output", None)
    frames = len(list(folder.glob("frames/frame-*.png")))
    result["frames"] = frames
    result["mp4"] = (folder / "animation.mp4").exists()
    result["gif"] = (folder / "animation.gif").exists()
    notes = [f"`pixgen animate ... -p imagenet {' '.join(ctx.plan.anim_flags)}`: frame 0 from scratch, then each "
             "frame zoomed, encoded and optimised again."]
    if no_video:
        notes.append("imageio-ffmpeg is not installed here, so the MP4 was skipped (pixgen's save_video patched "
                     "out); the GIF and every frame were written.")
    rows = [["12-frame animation", frames, result["wall_s"], frames / result["wall_s"] * 60 if frames else None,
             result.get("it_s"), result["mp4"], result["gif"], gib(result.get("max_allocated"))]]
    return {"data": result, "notes": notes, "tables": [table(
        "pixgen animate", ["run", "frames", "wall s", "frames/minute", "it/s", "MP4", "GIF", "peak allocated GiB"],
        rows)]}


# --- driving the sections ------------------------------------------------------------------------

@dataclass(frozen=True)
class Section:
    name: str
    title: str
    run: Any
    need: float  # seconds below which it skips itself (full mode)
    cap: float  # most seconds it may take (full mode)


SECTIONS = (
    Section("environment", "Machine and software", section_environment, 5, 30),
    Section("setup", "Checkpoints and registry", section_setup, 20, 90),
    Section("step_time", "Step time: pixgen against the reference loop", section_step_time, 25, 60),
    Section("grad_cosine", "bf16 against fp32: gradient cosine", section_grad_cosine, 8, 30),
    Section("vram", "VRAM per size, against the pre-flight estimate", section_vram, 25, 75),
    Section("levers", "Levers on the step", section_levers, 30, 60),
    Section("runs", "Whole `pixgen run` processes (imagenet, quality)", section_runs, 60, 200),
    Section("default_run", "Default run (bundled models)", section_default_run, 20, 60),
    Section("determinism", "Determinism", section_determinism, 40, 90),
    Section("batch", "Batch of jobs", section_batch, 50, 120),
    Section("animation", "12-frame animation", section_animation, 30, 90),
    Section("compile", "torch.compile (reduce-overhead: CUDA graphs)", section_compile, 60, 240),
)


def run_sections(ctx: Context, selected: list[Section]) -> None:
    report = ctx.report
    for index, section in enumerate(selected):
        later_needs = sum(s.need for s in selected[index + 1:]) if not ctx.smoke else 0
        remaining = ctx.remaining()
        need = 0 if ctx.smoke else section.need
        record: dict[str, Any] = {"title": section.title, "status": "running", "seconds": 0.0}
        report.data["sections"][section.name] = record
        if remaining < need or remaining <= 0:
            record.update(status="skipped", reason=f"{max(remaining, 0):.0f} s of the budget left, it needs about "
                                                   f"{need:.0f} s")
            report.write()
            continue
        allowed = section.cap if not ctx.smoke else remaining
        ctx.deadline = time.monotonic() + max(min(allowed, remaining - later_needs), need)
        report.write()
        print(f"[{time.monotonic() - ctx.start:6.1f} s] {section.name} (up to {ctx.left():.0f} s)", flush=True)
        start = time.monotonic()
        try:
            results = section.run(ctx)
            record.update(status="partial" if results.pop("partial", False) else "ok", results=results)
        except Exception as err:  # noqa: BLE001 - one section's failure must not lose the others
            record.update(status="error", error=f"{type(err).__name__}: {err}")
            report.log(f"[{section.name}] {traceback.format_exc()}")
        finally:
            record["seconds"] = time.monotonic() - start
            report.data["meta"]["elapsed_s"] = time.monotonic() - ctx.start
            cleanup()
            with contextlib.suppress(Exception):
                report.data["summary"] = summary(report.data["sections"])
            report.write()
        print(f"           {section.name}: {record['status']} in {record['seconds']:.1f} s"
              + (f" ({record['error'][:200]})" if record.get("error") else ""), flush=True)


def summary(sections: dict) -> dict:
    """The headline figures, each only when its section produced it."""
    out: dict[str, Any] = {}

    def data(name):
        return (sections.get(name) or {}).get("results", {}).get("data") or {}

    for size, entry in data("step_time").items():
        stats = entry["stats"]
        out[f"step {size}²: pixgen ({entry['default_precision']}) it/s"] = stats["pixgen-default"]["it_s"]
        out[f"step {size}²: reference it/s"] = stats["reference"]["it_s"]
        out[f"step {size}²: pixgen speed-up vs reference"] = (stats["reference"]["median_s"]
                                                               / stats["pixgen-default"]["median_s"])
    if data("grad_cosine").get("bf16_min_cosine") is not None:
        out["bf16 vs fp32 gradient cosine (min)"] = data("grad_cosine")["bf16_min_cosine"]
    for preset, r in data("runs").items():
        out[f"pixgen run -p {preset}: wall s per image"] = r["wall_s"]
        out[f"pixgen run -p {preset}: it/s"] = r.get("it_s")
        out[f"pixgen run -p {preset}: peak allocated GiB"] = gib(r.get("max_allocated"))
    if data("default_run"):
        out["default run: wall s"] = data("default_run")["wall_s"]
    for spec, r in data("batch").items():
        out[f"batch --devices {spec}: jobs/minute"] = r["jobs_per_minute"]
    if data("animation"):
        out["12-frame animation: wall s"] = data("animation")["wall_s"]
    for label, r in data("determinism").items():
        out[f"same seed twice ({label}): same bytes"] = r["same_bytes"]
        out[f"same seed twice ({label}): max pixel diff"] = r["max_pixel_diff"]
    for precision, fits in data("vram").get("largest", {}).items():
        for card in CARDS_GIB:
            if fits.get(str(card)) is not None:
                out[f"largest square, {precision}, {card} GiB"] = fits[str(card)]
    return out


def make_context(args: argparse.Namespace, report: Report, budget: float) -> Context:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    if args.work:  # a fresh folder inside it: batch would skip jobs an earlier check finished
        Path(args.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pixgen-gpu-check-", dir=args.work))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PIXGEN_HOME", str(work / "pixgen-home"))
    ctx = Context(args, SMOKE if args.smoke else FULL, device, work, report, time.monotonic(), budget)
    if args.smoke:
        torch.set_num_threads(1)
    ctx.vqgan_arch = tiny_configs()[0] if args.smoke else f16_architecture()
    return ctx


def watchdog(ctx: Context, grace: float) -> None:
    """Past the budget plus ``grace``, mark the running section, write the reports and exit."""
    while True:
        time.sleep(2)
        if ctx.remaining() < -grace:
            for record in ctx.report.data["sections"].values():
                if record["status"] == "running":
                    record.update(status="error", error=f"stopped by the watchdog {grace:.0f} s past the budget")
            ctx.report.data["meta"]["elapsed_s"] = time.monotonic() - ctx.start
            ctx.report.write()
            print("watchdog: over budget, reports written, exiting", flush=True)
            os._exit(3)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu-report.json, gpu-report.md, gpu-log.txt")
    parser.add_argument("--budget", type=float, default=450, help="seconds for all sections [450]")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models: every section in seconds")
    parser.add_argument("--only", help="comma-separated sections to run (setup is added when a process section "
                                       "needs it)")
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument("--device", help="cuda or cpu [cuda when available; cpu with --smoke]")
    parser.add_argument("--work", help="where to make the scratch folder for checkpoints and outputs [the system's "
                                       "temporary folder]")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    parser.add_argument("--child", choices=["compile"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child == "compile":
        compile_child(args)
        return 0
    names = [s.name for s in SECTIONS]
    only = [n.strip() for n in (args.only or "").split(",") if n.strip()]
    skip = [n.strip() for n in (args.skip or "").split(",") if n.strip()]
    unknown = [n for n in only + skip if n not in names]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    process_sections = {"runs", "determinism", "batch", "animation"}
    if only and process_sections & set(only):
        only.append("setup")
    selected = [s for s in SECTIONS if (not only or s.name in only or s.name == "environment")
                and s.name not in skip]
    (out / LOG_NAME).write_text("")
    meta = {"mode": "smoke (CPU, tiny models)" if args.smoke else "full", "budget_s": args.budget,
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv[1:],
            "sections_selected": [s.name for s in selected]}
    report = Report(out, meta)
    ctx = make_context(args, report, args.budget)
    meta["device"] = str(ctx.device)
    threading.Thread(target=watchdog, args=(ctx, 60.0), daemon=True).start()
    try:
        run_sections(ctx, selected)
    finally:
        if not args.keep_work:
            shutil.rmtree(ctx.work, ignore_errors=True)
    report.data["meta"]["elapsed_s"] = time.monotonic() - ctx.start
    report.write()
    print()
    print("\n".join(f"{k}: {fmt(v)}" for k, v in report.data["summary"].items()))
    print("\n" + "\n".join(f"{name:12s} {s['status']:8s} {s.get('seconds', 0):6.1f} s"
                           + (f"  {s.get('error') or s.get('reason') or ''}"[:160])
                           for name, s in report.data["sections"].items()))
    print(f"\nreports: {out / REPORT_JSON}, {out / REPORT_MD}; total {report.data['meta']['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
