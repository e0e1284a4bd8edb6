"""Masked completion (minissd/related/completion.py): the known region follows f^in's
forward process at every step and is f^in at the end; 3-D boxes carried to voxels, plane
texels and points; the command line's errors."""
import pytest
import torch

from minissd.cli import main
from minissd.prior.diffusion import NoiseSchedule
from minissd.prior.sampling import _alpha_sigma
from minissd.related.completion import (FieldMatch, complete, completion_step, known_points,
                                        parse_mask, plane_mask, region_mask, start_levels, voxel_mask)
from minissd.related.voxel import VoxelField, grid_points


def _denoise(x, t):                       # any function of (x, t): completion must not care
    return torch.tanh(x * 0.7 + t.float().view(-1, *[1] * (x.dim() - 1)) / 100)


def test_known_region_is_f_in_noised_at_every_step_and_f_in_at_the_end():
    sched = NoiseSchedule(T=100)
    g = torch.Generator().manual_seed(0)
    f_in = torch.rand(1, 4, 6, 6, 6, generator=g) * 2 - 1
    m = voxel_mask(parse_mask("back-half"), 6)
    known = (m == 0).expand(2, 4, 6, 6, 6)
    seen = []

    def check(i, t, s, f_s, f0, blend, z):
        a, sg = _alpha_sigma(sched, s, f_s)
        want = a.view(-1, 1, 1, 1, 1) * f_in + sg.view(-1, 1, 1, 1, 1) * z
        assert torch.allclose(f_s[known], want[known], atol=1e-6)
        assert torch.allclose(f_s[~known], (a.view(-1, 1, 1, 1, 1) * f0 + sg.view(-1, 1, 1, 1, 1) * z)[~known],
                              atol=1e-6)
        seen.append(s)

    out = complete(_denoise, sched, f_in, m, steps=5, n=2, generator=g, callback=check)
    assert seen[-1] == -1 and len(seen) == 5
    assert torch.allclose(out[known], f_in.expand(2, -1, -1, -1, -1)[known], atol=1e-6)
    assert not torch.allclose(out[0][~known[0]], out[1][~known[1]])      # proposals differ


def test_resampling_keeps_the_known_region_too():
    sched = NoiseSchedule(T=100)
    f_in = torch.rand(1, 4, 4, 4, 4) - 0.5
    m = voxel_mask((-1, -1, -1, 0, 1, 1), 4)
    out = complete(_denoise, sched, f_in, m, steps=4, resample=3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out[(m == 0).expand_as(out)], f_in[(m == 0).expand_as(f_in)], atol=1e-6)


def test_start_begins_at_t0_from_the_filled_field_noised_and_keeps_the_known_region():
    sched = NoiseSchedule(T=100)
    f_in, fill = torch.rand(1, 4, 6, 6, 6) - 0.5, torch.full((1, 4, 6, 6, 6), 0.7)
    m = voxel_mask(parse_mask("back-half"), 6)
    assert start_levels(100, 4, 39) == [39, 29, 19, 9] and start_levels(100, 50, 9) == list(range(9, -1, -1))
    assert start_levels(100, 5) == [99, 79, 59, 39, 19]                    # default: the whole chain
    with pytest.raises(ValueError, match="start"):
        start_levels(100, 5, 100)
    calls = []

    def denoise(x, t):
        calls.append((x.clone(), t.clone()))
        return _denoise(x, t)

    out = complete(denoise, sched, f_in, m, steps=4, n=2, generator=torch.Generator().manual_seed(2),
                   start=39, fill=fill)
    x, t = calls[0]
    assert t.tolist() == [39, 39] and len(calls) == 4                       # 4 levels from t0 = 39 down
    a, s = _alpha_sigma(sched, 39, x)
    z = torch.randn(2, 4, 6, 6, 6, generator=torch.Generator().manual_seed(2))   # the first draw
    filled = m * fill + (1 - m) * f_in
    assert torch.allclose(x, a[0] * filled + s[0] * z, atol=1e-6)           # q(f_t0 | filled f^in)
    known = (m == 0).expand_as(out)
    assert torch.allclose(out[known], f_in.expand_as(out)[known], atol=1e-6)


def test_completion_step_is_one_loop_iteration():
    sched = NoiseSchedule(T=100)
    f_in, m = torch.rand(1, 4, 4, 4, 4), voxel_mask(parse_mask("back-half"), 4)
    x = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    a = completion_step(_denoise, sched, x, 99, 49, f_in, m, torch.Generator().manual_seed(4))[0]
    b = completion_step(_denoise, sched, x, 99, 49, f_in, m, torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b)


def test_box_masks_cover_exactly_the_named_voxels_texels_and_points():
    box = parse_mask("box:-0.5,-0.5,-0.5,0.5,0.5,0.5")
    m = voxel_mask(box, 5)[0, 0]                       # vertices at -1, -.5, 0, .5, 1
    want = torch.zeros(5, 5, 5)
    want[1:4, 1:4, 1:4] = 1
    assert torch.equal(m, want)
    half = voxel_mask(parse_mask("back-half"), 5)[0, 0]
    assert torch.equal(half.nonzero()[:, 0].unique(), torch.tensor([2, 3, 4]))   # x >= 0
    assert torch.equal(region_mask(box, grid_points(5)), want.bool())
    # triplane texels (centres -0.75, -0.25, 0.25, 0.75): back-half frees x > 0 columns
    pm = plane_mask(parse_mask("back-half"), 4)[0, :, 0]           # (3, R, R) [plane, j, i]
    assert torch.equal(pm[0], torch.tensor([[0, 0, 1, 1.]] * 4))  # xy: x along the width i
    assert torch.equal(pm[1], torch.tensor([[0, 0, 1, 1.]] * 4))  # xz
    assert torch.equal(pm[2], torch.ones(4, 4))                   # yz: every column meets x > 0
    pb = plane_mask((0.0, -1.0, 0.5, 1.0, 0.0, 1.0), 4)[0, :, 0]
    assert torch.equal(pb[0], torch.tensor([[0, 0, 1, 1.]] * 2 + [[0, 0, 0, 0.]] * 2))   # xy: y <= 0 rows
    assert torch.equal(pb[1], torch.tensor([[0, 0, 0, 0.]] * 3 + [[0, 0, 1, 1.]]))      # xz: z >= .5 row
    p = known_points(box, 500, torch.Generator().manual_seed(0))
    assert p.shape == (500, 3) and not region_mask(box, p).any()


def test_field_match_pulls_the_known_region_towards_f_in():
    box = parse_mask("back-half")
    g = torch.Generator().manual_seed(5)
    f_in = torch.rand(1, 4, 6, 6, 6, generator=g) * 2 - 1
    f0 = torch.rand(1, 4, 6, 6, 6, generator=g) * 2 - 1
    guide = FieldMatch(VoxelField, f_in, box, n_points=2000, inner=5, n_samples=8,
                       generator=torch.Generator().manual_seed(6))
    before = float(guide.loss(f0))
    assert float(guide.loss(guide(f0, None))) < before


@pytest.mark.parametrize("argv, needle", [
    (["--mask", "box:1,0,0,0,1,1"], "--mask"),
    (["--mask", "front"], "--mask"),
    (["--mask", "back-half", "--ckpt", "/nonexistent.pt"], "--ckpt"),
])
def test_complete_cli_errors_are_one_line(argv, needle, made, tmp_path, capsys):
    args = {"--ckpt": str(tmp_path / "x.pt"), "--data": made, "--out": str(tmp_path / "o")}
    for k, v in zip(argv[::2], argv[1::2]):
        args[k] = v
    assert main(["complete"] + [x for kv in args.items() for x in kv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + needle) and "\n" not in err


def test_complete_cli_start_runs_and_refuses_a_level_past_t(made, tmp_path, capsys):
    import json
    from dataclasses import replace

    from minissd.data.srn import SRNDataset
    from minissd.related.diffrf import DiffRFModel, VoxelPrior, diffrf_preset
    cfg = replace(diffrf_preset("smoke"), grid_res=8, unet_base=8, unet_mults=(1, 2), unet_groups=4,
                  image_res=16, n_samples=8, T=50, ddim_steps=3)
    names = [SRNDataset(made)[i]["name"] for i in range(2)]
    path = DiffRFModel(cfg, VoxelPrior(cfg).eval(), torch.rand(2, 4, 8, 8, 8) * 2 - 1, names).save(
        str(tmp_path / "m.pt"))
    base = ["complete", "--ckpt", path, "--data", made, "--mask", "back-half", "--out", str(tmp_path / "o"),
            "--n", "2", "--objects", "1", "--views", "2"]
    assert main(base + ["--start", "50"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --start 50") and "\n" not in err
    assert main(base + ["--start", "20", "--json", str(tmp_path / "r.json")]) == 0
    r = json.load(open(tmp_path / "r.json"))
    assert r["start"] == 20 and r["objects"][0]["psnr_known"] > 0
    assert main(base + ["--json", str(tmp_path / "p.json")]) == 0                # from pure noise
    p = json.load(open(tmp_path / "p.json"))
    assert p["start"] is None and p["objects"][0]["psnr_completed"] != r["objects"][0]["psnr_completed"]
