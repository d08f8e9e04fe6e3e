"""The reference loop's cutout augmentations: pure functions, through make_cutouts, and as config keys."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from click.testing import CliRunner

from pixgen.cli import cli
from pixgen.engine.augment import colour_jitter, random_affine, random_erasing, random_perspective
from pixgen.engine.cutouts import CutoutSpec, make_cutouts

ON = {  # each augmentation with an amount that is on, applied to every cut
    "shear": lambda cuts, gen: random_affine(cuts, gen, p=1.0, shear=10),
    "perspective": lambda cuts, gen: random_perspective(cuts, gen, p=1.0, distortion=0.5),
    "jitter": lambda cuts, gen: colour_jitter(cuts, gen, p=1.0, saturation=0.3, hue=0.2),
    "erase": lambda cuts, gen: random_erasing(cuts, gen, p=1.0),
}
OFF = {  # amount 0 (or p 0): must be a no-op
    "shear 0": lambda cuts, gen: random_affine(cuts, gen, p=1.0, shear=0),
    "affine p 0": lambda cuts, gen: random_affine(cuts, gen, p=0.0, degrees=15, translate=0.1, shear=5),
    "perspective 0": lambda cuts, gen: random_perspective(cuts, gen, p=1.0, distortion=0),
    "perspective p 0": lambda cuts, gen: random_perspective(cuts, gen, p=0.0, distortion=0.7),
    "jitter 0": lambda cuts, gen: colour_jitter(cuts, gen, p=1.0, saturation=0, hue=0),
    "jitter p 0": lambda cuts, gen: colour_jitter(cuts, gen, p=0.0, saturation=0.1, hue=0.1),
    "erase 0": lambda cuts, gen: random_erasing(cuts, gen, p=0.0),
}
SPEC_ON = {"shear": 10.0, "perspective": 0.5, "jitter": 0.2, "erase": 0.5}
RUN = ["run", "a red circle", "--seed", "1", "-q"]


def cuts_of(seed: int = 0, n: int = 6, side: int = 24) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def spec(**fields) -> CutoutSpec:
    return CutoutSpec(cut_count=8, cut_size=16, rotate=10, noise=0.05, **fields)


@pytest.mark.parametrize("name", ON)
def test_each_augmentation_changes_the_cuts_and_passes_gradients(name):
    cuts = cuts_of().requires_grad_(True)
    out = ON[name](cuts, torch.Generator().manual_seed(1))
    assert out.shape == cuts.shape
    assert not torch.equal(out, cuts)
    out.sum().backward()
    assert torch.isfinite(cuts.grad).all() and cuts.grad.abs().sum() > 0


@pytest.mark.parametrize("name", OFF)
def test_off_returns_the_same_tensor_and_draws_nothing(name):
    cuts, gen = cuts_of(), torch.Generator().manual_seed(1)
    state = gen.get_state()
    assert OFF[name](cuts, gen) is cuts
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("name", ON)
def test_same_seed_same_result(name):
    first = ON[name](cuts_of(), torch.Generator().manual_seed(3))
    assert torch.equal(first, ON[name](cuts_of(), torch.Generator().manual_seed(3)))
    assert not torch.equal(first, ON[name](cuts_of(), torch.Generator().manual_seed(4)))


def test_probability_picks_some_cuts_and_leaves_the_rest_bit_identical():
    cuts = cuts_of(n=64, side=8)
    out = random_perspective(cuts, torch.Generator().manual_seed(0), p=0.5, distortion=0.5)
    same = [torch.equal(a, b) for a, b in zip(out, cuts, strict=True)]
    assert 16 <= sum(same) <= 48


def test_perspective_keeps_the_centre_pixel_roughly_in_place():
    side = 33  # odd: the centre pixel sits at the middle of the cut
    ys, xs = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    ramp = torch.stack([xs, ys, torch.zeros_like(xs)]).expand(200, 3, side, side).contiguous()  # pixel = position
    out = random_perspective(ramp, torch.Generator().manual_seed(0), p=1.0, distortion=0.5)
    centre = out[:, :2, side // 2, side // 2]
    assert (centre - 0.5).abs().max() < 0.25  # corners move at most a quarter side at distortion 0.5
    assert (centre - 0.5).abs().mean() < 0.08
    assert not torch.equal(out, ramp)


def test_erasing_zeroes_one_box_of_10_to_40_percent_of_each_cut():
    side = 64
    out = random_erasing(torch.ones(50, 3, side, side), torch.Generator().manual_seed(0), p=1.0)
    for cut in out:
        zero = cut[0] == 0
        assert torch.equal(zero, cut[1] == 0) and torch.equal(zero, cut[2] == 0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # the zeros are one filled rectangle
        assert 0.09 <= zero.float().mean() <= 0.41  # 10-40 %, give or take rounding to whole pixels
        assert 0.25 <= len(rows) / len(cols) <= 1 / 0.25  # aspect 0.3-3.3, give or take clipping and rounding
    assert ((out == 0).float().mean((1, 2, 3)).std()) > 0.02  # the boxes differ from cut to cut


def test_jitter_keeps_grey_grey_and_is_identity_without_amounts():
    grey = torch.full((4, 3, 8, 8), 0.4)
    out = colour_jitter(grey, torch.Generator().manual_seed(0), p=1.0, saturation=0.0, hue=0.5)
    assert torch.allclose(out, grey, atol=1e-5)  # hue turns colours, and grey has none
    cuts = cuts_of()
    assert colour_jitter(cuts, torch.Generator(), p=1.0, saturation=0.0, hue=0.0) is cuts


def test_make_cutouts_with_every_augmentation_off_is_unchanged():
    image = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    base_gen, off_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    base = make_cutouts(image, spec(), base_gen)
    off = make_cutouts(image, spec(shear=0.0, perspective=0.0, jitter=0.0, erase=0.0, p=0.3), off_gen)
    assert torch.equal(base, off) and torch.equal(base_gen.get_state(), off_gen.get_state())


@pytest.mark.parametrize("field", SPEC_ON)
def test_make_cutouts_applies_each_augmentation(field):
    image = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    base = make_cutouts(image, spec(p=1.0), torch.Generator().manual_seed(5))
    augmented = make_cutouts(image, spec(p=1.0, **{field: SPEC_ON[field]}), torch.Generator().manual_seed(5))
    assert augmented.shape == base.shape and not torch.equal(augmented, base)


def test_make_cutouts_with_all_on_is_seeded_and_differentiable():
    image = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    all_on = spec(**SPEC_ON)
    cuts = make_cutouts(image, all_on, torch.Generator().manual_seed(7))
    assert torch.equal(cuts, make_cutouts(image, all_on, torch.Generator().manual_seed(7)))
    cuts.square().sum().backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_spec_fields_match_the_config_keys():
    names = {f.name for f in dataclasses.fields(CutoutSpec)}
    assert set(SPEC_ON) | {"p"} <= names


def test_cli_run_with_the_augmentations_on(tmp_path, tiny_preset):
    out = tmp_path / "out"
    sets = ["augment_shear=5", "augment_perspective=0.5", "augment_jitter=0.1", "augment_erase=0.5",
            "augment_p=0.9"]
    args = [*RUN, "--preset", str(tiny_preset), "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, *(x for s in sets for x in ("--set", s))])
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((out / "run.yaml").read_text())
    assert [recorded[s.split("=")[0]] for s in sets] == [5.0, 0.5, 0.1, 0.5, 0.9]
    assert (out / "image.png").is_file()


@pytest.mark.parametrize("setting, rule", [
    ("augment_shear=-1", "between 0 and 45"),
    ("augment_shear=90", "between 0 and 45"),
    ("augment_perspective=.nan", "finite"),
    ("augment_perspective=1.5", "between 0 and 1"),
    ("augment_jitter=0.6", "between 0 and 0.5"),
    ("augment_jitter=.inf", "finite"),
    ("augment_erase=-0.1", "between 0 and 1"),
    ("augment_p=2", "between 0 and 1"),
])
def test_bad_values_give_one_line_naming_the_key(setting, rule, tmp_path, tiny_preset):
    result = CliRunner().invoke(cli, [*RUN, "--preset", str(tiny_preset), "-o", str(tmp_path / "out"),
                                      "--set", setting])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"'{setting.split('=')[0]}'" in errors[0] and rule in errors[0], result.output
    assert not (tmp_path / "out").exists()
