"""The engine's pure tensor functions."""

import math

import torch

from pixgen.engine.cutouts import CutoutSpec, cutout_thetas, make_cutouts
from pixgen.engine.ops import clamp_to_codebook, clamp_with_grad, prompt_loss, spherical_distance, vector_quantize


def test_vector_quantize_snaps_forward_and_passes_gradient():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
    z = torch.tensor([[[[0.9]], [[1.2]]], [[[-0.7]], [[1.5]]]], requires_grad=True)  # (2, 2, 1, 1)
    q = vector_quantize(z, codebook)
    assert q[0, :, 0, 0].tolist() == [1.0, 1.0] and q[1, :, 0, 0].tolist() == [-1.0, 2.0]
    q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_clamp_with_grad_only_passes_gradients_back_into_range():
    x = torch.tensor([-0.5, 0.5, 1.5, 1.5], requires_grad=True)
    y = clamp_with_grad(x, 0.0, 1.0)
    assert y.tolist() == [0.0, 0.5, 1.0, 1.0]
    y.backward(torch.tensor([1.0, 1.0, 1.0, -1.0]))
    # below range, grad +1 means descent lowers x further: blocked; above range, +1 lowers x: kept
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_spherical_distance_values():
    u = torch.tensor([[1.0, 0.0]])
    assert spherical_distance(u, u).item() == 0.0
    orthogonal = spherical_distance(u, torch.tensor([[0.0, 1.0]])).item()
    assert math.isclose(orthogonal, 2 * (math.pi / 4) ** 2, rel_tol=1e-6)
    opposite = spherical_distance(u, torch.tensor([[-1.0, 0.0]])).item()
    assert math.isclose(opposite, 2 * (math.pi / 2) ** 2, rel_tol=1e-6)


def test_prompt_loss_weight_sign_and_stop():
    embeds = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_(True)
    target = torch.nn.functional.normalize(torch.randn(8), dim=0)
    plain = prompt_loss(embeds, target, 2.0)
    assert plain.item() > 0
    assert math.isclose(prompt_loss(embeds, target, -2.0).item(), -plain.item(), rel_tol=1e-6)
    stopped = prompt_loss(embeds, target, 1.0, stop=100.0)
    stopped.backward()
    assert torch.count_nonzero(embeds.grad) == 0  # every distance is below the stop value


def test_negative_prompt_stops_pushing_once_far_enough():
    embeds = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_(True)
    target = torch.nn.functional.normalize(torch.randn(8), dim=0)
    prompt_loss(embeds, target, -1.0, stop=0.0).backward()  # every cutout is at least 0 away
    assert torch.count_nonzero(embeds.grad) == 0
    embeds.grad = None
    prompt_loss(embeds, target, -1.0, stop=100.0).backward()  # none is that far yet: keep pushing
    assert torch.count_nonzero(embeds.grad) > 0


def test_clamp_to_codebook_is_per_channel():
    codebook = torch.tensor([[0.0, -1.0], [2.0, 1.0]])
    z = torch.tensor([[[[5.0]], [[-5.0]]]])
    clamp_to_codebook(z, codebook)
    assert z.flatten().tolist() == [2.0, -1.0]


def test_cutouts_are_one_batched_op_with_sizes_in_range():
    spec = CutoutSpec(cut_count=64, cut_size=16, cut_pow=1.0, flip=True, rotate=0.0)
    theta = cutout_thetas(48, 64, spec, torch.Generator().manual_seed(0))
    assert theta.shape == (64, 2, 3)
    width_px = theta[:, 0, 0].abs() * 64  # cut side in pixels (no rotation)
    assert (width_px >= 16 - 1e-4).all() and (width_px <= 48 + 1e-4).all()
    assert (theta[:, 0, 0] < 0).any() and (theta[:, 0, 0] > 0).any()  # some flipped
    # the cut stays inside the image: |centre| + half side <= 1 in normalised coordinates
    assert (theta[:, 0, 2].abs() + theta[:, 0, 0].abs() <= 1 + 1e-5).all()
    image = torch.rand(1, 3, 48, 64)
    cuts = make_cutouts(image, spec, torch.Generator().manual_seed(0))
    assert cuts.shape == (64, 3, 16, 16)


def test_overhanging_cuts_reach_past_the_edges_and_see_the_border_more_often():
    # as in the shapes world: cuts of 70-100 % of the image side, upsampled to the CLIP input
    inside = CutoutSpec(cut_count=4000, cut_size=64, flip=False, min_scale=0.7)
    over = CutoutSpec(cut_count=4000, cut_size=64, flip=False, min_scale=0.7, overhang=0.2)
    a = cutout_thetas(32, 32, inside, torch.Generator().manual_seed(0))
    b = cutout_thetas(32, 32, over, torch.Generator().manual_seed(0))
    half = b[:, 0, 0].abs()  # half the cut's side, normalised
    reach = b[:, 0, 2].abs() + half - 1  # how far past the edge the cut reaches
    assert reach.max() > 0.05 and (reach <= 2 * 0.2 * half + 1e-5).all()
    assert torch.equal(a[:, :, :2], b[:, :, :2])  # same sizes: only where the cuts sit changed

    def seen_at_the_edge(theta):  # share of cuts that cover the centre of the leftmost pixel column
        return ((theta[:, 0, 2] - theta[:, 0, 0].abs()) <= -1 + 1 / 32).float().mean()

    assert seen_at_the_edge(b) > 1.5 * seen_at_the_edge(a)  # 39 vs 20 %
    image = torch.rand(1, 3, 32, 32)
    cuts = make_cutouts(image, over, torch.Generator().manual_seed(0))
    assert cuts.shape == (4000, 3, 64, 64) and cuts.min() >= 0 and cuts.max() <= 1  # reflection fills


def test_zero_overhang_draws_the_same_cuts_as_before():
    spec = CutoutSpec(cut_count=16, cut_size=16, rotate=10.0, min_scale=0.5)
    theta = cutout_thetas(24, 40, spec, torch.Generator().manual_seed(2))
    rand = torch.rand(16, 5, generator=torch.Generator().manual_seed(2))
    size = rand[:, 0] * (24 - 8) + 8
    assert torch.equal(theta[:, 0, 2], (size / 2 + rand[:, 1] * (40 - size)) * 2 / 40 - 1)
    assert torch.equal(theta[:, 1, 2], (size / 2 + rand[:, 2] * (24 - size)) * 2 / 24 - 1)


def test_identity_cutout_reproduces_the_image():
    image = torch.rand(1, 3, 16, 16)
    spec = CutoutSpec(cut_count=2, cut_size=16, flip=False, rotate=0.0, noise=0.0)
    cuts = make_cutouts(image, spec, torch.Generator().manual_seed(0))
    assert torch.allclose(cuts, image.expand(2, -1, -1, -1), atol=1e-5)


def test_cutouts_are_reproducible_from_the_generator():
    image = torch.rand(1, 3, 32, 32)
    spec = CutoutSpec(cut_count=8, cut_size=16, rotate=15, noise=0.1)
    a = make_cutouts(image, spec, torch.Generator().manual_seed(3))
    b = make_cutouts(image, spec, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def _checkerboard(side: int) -> torch.Tensor:
    board = (torch.arange(side).view(1, -1) + torch.arange(side).view(-1, 1)) % 2
    return board.float().expand(1, 3, side, side).contiguous()


def test_cutouts_that_shrink_a_lot_are_low_pass_filtered():
    from pixgen.engine.cutouts import sample_cuts

    image = _checkerboard(512)  # a 1-pixel pattern: any aliasing shows as a false pattern
    spec = CutoutSpec(cut_count=6, cut_size=32, flip=False, rotate=10.0, min_scale=4.0)  # 128-512 px cuts
    cuts = make_cutouts(image, spec, torch.Generator().manual_seed(0))
    assert cuts.std().item() < 0.02 and abs(cuts.mean().item() - 0.5) < 0.01  # averaged to flat grey
    theta = cutout_thetas(512, 512, spec, torch.Generator().manual_seed(0))
    grid = torch.nn.functional.affine_grid(theta, [6, 3, 32, 32], align_corners=False)
    aliased = sample_cuts(image, grid, torch.zeros(6, dtype=torch.long))  # plain bilinear: what it was
    assert aliased.std().item() > 0.1  # about 0.17: a false pattern


def test_cutouts_below_a_2x_shrink_are_sampled_as_before():
    image = torch.rand(1, 3, 64, 64)
    spec = CutoutSpec(cut_count=8, cut_size=48, rotate=15.0)
    cuts = make_cutouts(image, spec, torch.Generator().manual_seed(1))
    theta = cutout_thetas(64, 64, spec, torch.Generator().manual_seed(1))
    grid = torch.nn.functional.affine_grid(theta, [8, 3, 48, 48], align_corners=False)
    plain = torch.nn.functional.grid_sample(image.expand(8, -1, -1, -1), grid, mode="bilinear",
                                            padding_mode="reflection", align_corners=False)
    assert torch.equal(cuts, plain)
