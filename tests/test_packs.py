"""Model packs: the bundled shapes pack and a second one, installed through the entry-point group."""

from __future__ import annotations

import shutil
import sys
import textwrap

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from pixgen.cli import cli
from pixgen.models import packs
from pixgen.models.registry import load_registry

PACK_MODULE = '''
from pathlib import Path

from pixgen.models.packs import Pack

CALLS = []


def read_prompts(prompts, clips):
    from dataclasses import replace

    CALLS.append([clip.name for clip in clips])
    return [replace(p, source="a red circle") if p.source == "blob" else p for p in prompts]


PACK = Pack(name="blobs", registry=Path(__file__).parent / "blobs.yaml", read_prompts=read_prompts,
            prompt_notice=lambda text: f"note: the blob world reads {text!r} its own way")
'''


@pytest.fixture
def second_pack(tmp_path, tiny_models, monkeypatch):
    """A pack module 'blobs_pack' with one CLIP (the tiny test CLIP), installed as a distribution
    whose entry point names it in the pixgen.packs group."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "blobs_pack.py").write_text(PACK_MODULE)
    for name in ("clip.json", "clip.safetensors"):
        shutil.copy(tiny_models["folder"] / name, site / name)
    (site / "blobs.yaml").write_text(yaml.safe_dump(
        {"clip": {"blob-clip": {"description": "a second world's CLIP", "config": "clip.json",
                                "bundled": {"path": "clip.safetensors"}}}}))
    dist = site / "blobs_pack-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: blobs-pack\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pixgen.packs]\nblobs = blobs_pack\n")
    monkeypatch.syspath_prepend(str(site))
    packs.installed_packs.cache_clear()
    yield site
    packs.installed_packs.cache_clear()
    sys.modules.pop("blobs_pack", None)


def test_the_shapes_pack_is_found_and_owns_its_registry_entries():
    found = packs.installed_packs()
    assert "shapes" in found
    registry = load_registry()
    owned = {name for kind in ("vqgan", "clip", "judge") for name in registry.names(kind)
             if registry.get(kind, name).pack == "shapes"}
    assert owned == {"shapes-vqgan", "shapes-clip", "shapes-clip-2", "shapes-clip-3", "shapes-judge"}
    assert registry.get("clip", "tiny-clip").pack is None


def test_a_second_pack_plugs_in_without_touching_the_engine(second_pack, tmp_path, tiny_preset):
    assert set(packs.installed_packs()) >= {"shapes", "blobs"}
    listed = CliRunner().invoke(cli, ["models", "list"])
    assert "blob-clip" in listed.output and "a second world's CLIP" in listed.output

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "blob", "--preset", str(tiny_preset), "--clip", "blob-clip",
                                      "--seed", "1", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "note: the blob world reads 'blob' its own way" in result.output
    assert "read 'blob' as 'a red circle'" in result.output
    assert sys.modules["blobs_pack"].CALLS and sys.modules["blobs_pack"].CALLS[0] == ["blob-clip"]
    with Image.open(out / "image.png") as image:
        assert image.text["prompt"] == "blob" and image.text["read_as"].strip() == "blob: a red circle"

    mixed = CliRunner().invoke(cli, ["run", "blob", "--preset", str(tiny_preset), "--clip", "blob-clip",
                                     "--clip", "tiny-clip", "--seed", "1", "-o", str(tmp_path / "mixed"), "-q"])
    assert mixed.exit_code == 0, mixed.output
    assert "read 'blob'" not in mixed.output and "note:" not in mixed.output  # not every CLIP is the pack's


def test_a_pack_module_without_PACK_is_refused_in_one_line(second_pack, tiny_preset, tmp_path):
    (second_pack / "blobs_pack.py").write_text(textwrap.dedent("VERSION = 1\n"))
    result = CliRunner().invoke(cli, ["run", "a red circle", "--preset", str(tiny_preset), "-o",
                                      str(tmp_path / "x"), "-q"])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: model pack blobs_pack defines no "
                                     "PACK = pixgen.models.packs.Pack(...)")
    assert not (tmp_path / "x").exists()
