"""The bundled shapes-world models: registered hashes, size budget, and prompt fidelity end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pixgen.cli import cli
from pixgen.models.downloads import sha256_file
from pixgen.models.factory import load_judge_model
from pixgen.models.registry import KINDS, load_registry, read_registry_file
from pixgen.packs.shapes import PACK
from pixgen.packs.shapes.world import ATTRIBUTES, held_out_prompts, parse_caption

BUNDLED = [entry for kind in KINDS for entry in read_registry_file(PACK.registry)[kind].values()
           if entry.bundled is not None]


def test_every_default_model_is_bundled():
    assert {e.name for e in BUNDLED} == {"shapes-vqgan", "shapes-clip", "shapes-clip-2", "shapes-clip-3",
                                         "shapes-judge"}


@pytest.mark.parametrize("entry", BUNDLED, ids=lambda e: e.name)
def test_shipped_file_matches_registered_sha256(entry):
    assert entry.bundled.path.is_file(), entry.bundled.path
    assert sha256_file(entry.bundled.path) == entry.bundled.sha256


def test_shipped_weights_fit_the_budget():
    weights = PACK.registry.parent / "weights"
    total = sum(path.stat().st_size for path in weights.iterdir())
    assert total <= 30 * 2**20


def test_default_run_is_offline_and_draws_what_the_prompt_asks(tmp_path, monkeypatch):
    # One held-out prompt per shape at the default preset, seed 0: the judge, forced to name one of
    # the three shapes, must read back every attribute. Its strict reading ("other" for several
    # shapes or a blob) is not asserted: today it accepts about a third of generated images.
    # `pixgen eval --seeds 2` measures both rates over all 24 held-out prompts (README).
    monkeypatch.delenv("PIXGEN_REGISTRY")  # the real, bundled registry only
    judge = load_judge_model("shapes-judge", load_registry()).module
    for index, prompt in enumerate(held_out_prompts()[::8]):
        out = tmp_path / f"run{index}"
        result = CliRunner().invoke(cli, ["--offline", "run", prompt, "--seed", "0", "-o", str(out), "-q"])
        assert result.exit_code == 0, result.output
        pixels = np.asarray(Image.open(out / "image.png"), dtype=np.float32) / 255
        image = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        (seen,) = judge.predict(image, forced_choice=True)
        expected = parse_caption(prompt)
        assert {name: seen[name] for name in ATTRIBUTES} == {name: expected[name] for name in ATTRIBUTES}, prompt
