"""The evaluation protocol: view selection, recon / ablation / generation metrics, tables, JSON, CLI."""
import json
import math

import numpy as np
import pytest
import torch

from minissd.config import TestConfig, get_preset
from minissd.data.procedural import ensure_dataset
from minissd.eval import evaluate as ev

# seconds, not minutes: 2 DDIM steps, 2 finetuning outer steps
FAST = dict(tcfg=TestConfig(recon_steps=2, ft_schedule=((1, 2, 5e-3),)), progress=False)


@pytest.fixture(scope="module")
def setup():
    from minissd.ssd.model import load_or_train
    cfg = get_preset("smoke")
    model = load_or_train("single-stage", cfg, progress=False)       # trains once, then cached
    test = ensure_dataset("cars", "test", n_scenes=2, n_views=24, resolution=cfg.image_res,
                          seed=0, progress=False)
    train = ensure_dataset("cars", "train", n_scenes=cfg.data_scenes, n_views=cfg.data_views,
                           resolution=cfg.image_res, seed=0, progress=False)
    return model, test, train


def test_paper_views_scale_to_short_spirals():
    assert ev.scaled_view_ids([64], 251) == [64]
    assert ev.scaled_view_ids([64, 104], 251) == [64, 104]
    assert ev.scaled_view_ids([64], 24) == [6]                     # 64/251 of the way round
    assert ev.scaled_view_ids([64, 104], 24) == [6, 10]
    assert ev.scaled_view_ids([64, 104], 251 * 2) == [64, 104]
    rest = ev.eval_view_ids(24, [6, 10], every=1)
    assert len(rest) == 22 and 6 not in rest and 10 not in rest
    assert ev.eval_view_ids(24, [6], every=5) == [0, 5, 11, 16, 21]


def test_reconstruction_metrics_are_finite_with_the_paper_columns(setup):
    model, test, _ = setup
    r = ev.evaluate_reconstruction(model, test, input_views=(64,), n_scenes=2, eval_every=6, **FAST)
    for k in ("PSNR", "SSIM", "LPIPS", "FID", "scenes", "n_images", "input_views"):
        assert k in r
    assert len(r["scenes"]) == 2 and r["n_images"] == sum(s["n_eval"] for s in r["scenes"]) == 8
    assert all(s["input_ids"] == [6] for s in r["scenes"])
    assert math.isfinite(r["PSNR"]) and 0 < r["PSNR"] < 60
    assert 0 < r["SSIM"] <= 1
    assert r["LPIPS"] is None or (0 <= r["LPIPS"] < 1)              # None: no VGG weights
    assert r["FID"] is None or math.isfinite(r["FID"])
    # the mean is over all images: equals the mean of scene means for equal view counts
    assert r["PSNR"] == pytest.approx(np.mean([s["PSNR"] for s in r["scenes"]]), rel=1e-6)


def test_ablations_rows_and_missing_model(setup):
    model, test, _ = setup
    res = ev.evaluate_ablations({"single-stage": model}, test, ablations=("A2", "A3"), n_scenes=1,
                                eval_every=8, **FAST)
    assert list(res) == ["A2", "A3"] and res["A3"]["finetune"] == "none"
    assert res["A2"]["label"] == "A2 (single-stage, rend)"
    table = ev.markdown_table(ev.side_by_side(res, ev.PAPER_ABLATION))
    assert len(table.splitlines()) == 2 + 4 and "| A2 paper | 23.13 | 0.907 | 0.088 | 27.93 |" in table
    assert table.splitlines()[2].startswith("| A2 ours | ")
    with pytest.raises(ValueError, match="two-stage"):
        ev.evaluate_ablations({"single-stage": model}, test, ablations=("A1",), n_scenes=1)


def test_markdown_table_formats_and_na():
    t = ev.markdown_table({"ours": {"PSNR": 23.521, "SSIM": 0.91349, "LPIPS": None, "FID": float("nan")},
                           "paper": ev.PAPER_ABLATION["A0"]})
    lines = t.splitlines()
    assert lines[0] == "| method | PSNR | SSIM | LPIPS | FID |"
    assert lines[2] == "| ours | 23.52 | 0.913 | n/a | n/a |"
    assert lines[3] == "| paper | 23.52 | 0.913 | 0.078 | 16.39 |"
    g = ev.markdown_table({"x": {"COV": 0.5, "MMD": 0.0012, "IMG_COV": 0.25, "IMG_MMD": 17.123,
                                 "IMG_PREC": 18.0, "FID": None, "KID": 3.47e-3}}, ev.GEN_COLUMNS)
    assert g.splitlines()[0] == ("| method | COV (%) | MMD (x1e3) | image COV (%) | image MMD (dB) "
                                 "| image PREC (dB) | FID | KID (x1e3) |")
    assert g.splitlines()[2] == "| x | 50.0 | 1.200 | 25.0 | 17.12 | 18.00 | n/a | 3.47 |"


def test_json_is_written_and_parseable(tmp_path):
    path = ev.write_json({"a": np.float32(1.5), "b": None, "c": float("inf"), "d": [np.int64(3)],
                          "e": (1, 2)}, str(tmp_path / "sub" / "r.json"))
    with open(path) as f:
        d = json.load(f)
    assert d == {"a": 1.5, "b": None, "c": None, "d": [3], "e": [1, 2]}


def test_known_answer_fitted_codes_beat_random_codes(setup):
    """Codes fitted to a training scene's views must score higher than random codes."""
    from minissd.data.srn import SRNDataset
    from minissd.testtime.finetune import finetune
    from minissd.testtime.guidance import views_to_rays
    model, _, train = setup
    ds = SRNDataset(train, resolution=model.cfg.image_res)
    sc, g = ds[0], torch.Generator().manual_seed(0)
    x_rand = 0.5 * torch.randn(1, *model.codes.shape[1:], generator=g)
    rays = views_to_rays(sc["images"], sc["c2w"], sc["K"])
    x_fit = finetune(model.decoder, model.prior, 0.01 * x_rand, rays, model.cfg, len(sc["images"]),
                     mode="rend", outer=10, lr=5e-2, generator=g)
    fit, rand = ev.evaluate_codes(model, x_fit, ds), ev.evaluate_codes(model, x_rand, ds)
    assert fit["n_images"] == rand["n_images"] == len(sc["images"])
    assert fit["PSNR"] > rand["PSNR"] + 1.0 and fit["SSIM"] > rand["SSIM"]


def test_generation_end_to_end_with_calibrated_threshold(setup):
    model, test, train = setup
    cal = ev.calibrate_threshold(model, train, n_codes=2, candidates=[0.1, 1.0, 10.0], res=24,
                                 n_points=256)
    assert cal["threshold"] in (0.1, 1.0, 10.0) and len(cal["curve"]) == 3
    assert cal["chamfer"] == min(cal["curve"])
    r = ev.evaluate_generation(model, test, n_samples=3, threshold=cal["threshold"], res=24,
                               n_points=256, steps=2, progress=False)
    assert r["n_reference"] == 2 and r["n_samples"] == 3
    assert (r["MMD"] is None) == (r["n_empty"] == 3) == (r["COV"] == 0)   # None only if every shell is empty
    assert r["FID"] is None or math.isfinite(r["FID"])


def test_generation_cov_mmd_known_answer(monkeypatch):
    """Stubbed samples whose shells are: reference 0 itself, reference 0 shifted, and empty.
    Both non-empty samples have reference 0 as nearest neighbour: COV = 1/2; MMD is the
    mean over references of the closest sample: (0 + min_g CD(g, ref 1)) / 2."""
    from types import SimpleNamespace

    from minissd.data.srn import SRNDataset
    from minissd.eval import geometry
    test = ensure_dataset("cars", "test", n_scenes=2, n_views=24, resolution=32, seed=0,
                          progress=False)
    ds = SRNDataset(test, resolution=32)
    ref0, ref1 = ds.surface(0)[0], ds.surface(1)[0]
    shells = [ref0, ref0 + torch.tensor([0.05, 0.0, 0.0]), torch.zeros(0, 3)]
    model = SimpleNamespace(cfg=SimpleNamespace(image_res=32), codes=torch.zeros(3, 1))
    monkeypatch.setattr(ev, "sample_codes", lambda m, n, steps, gen: torch.zeros(n, 1))
    monkeypatch.setattr(ev, "surface_points", lambda m, c, thr, res, n, seed=0: shells[seed])
    monkeypatch.setattr(ev, "render_views", lambda m, c, c2w, K, res: torch.ones(len(c2w), res, res, 3))
    r = ev.evaluate_generation(model, test, n_samples=3, with_fid=False, progress=False)
    assert r["n_empty"] == 1 and r["n_reference"] == 2
    assert r["COV"] == pytest.approx(0.5)
    d1 = min(geometry.chamfer_distance(shells[0], ref1), geometry.chamfer_distance(shells[1], ref1))
    assert d1 > 1e-3 and r["MMD"] == pytest.approx(d1 / 2, rel=1e-6)


def test_surface_points_of_an_empty_field_is_empty(setup):
    model, _, _ = setup
    p = ev.surface_points(model, model.codes[0], threshold=1e9, res=8, n_points=16)
    assert p.shape == (0, 3)


def test_cli_writes_table_and_json(setup, tmp_path, capsys):
    from minissd.cli import main
    model, test, _ = setup
    ckpt = model.save(str(tmp_path / "m.pt"))
    out = tmp_path / "r.json"
    assert main(["evaluate", "--ckpt", ckpt, "--data", test, "--task", "recon", "--ablation", "A3",
                 "--scenes", "1", "--eval-every", "8", "--steps", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| A3 ours |" in printed and "| A3 paper | 23.07 | 0.905 | 0.092 | 30.95 |" in printed
    d = json.loads(out.read_text())
    assert math.isfinite(d["results"]["A3"]["PSNR"]) and d["table"].startswith("| method |")
    with pytest.raises(SystemExit, match="ckpt2"):
        main(["evaluate", "--ckpt", ckpt, "--data", test, "--ablation", "A1", "--json", str(out)])


def test_image_coverage_by_hand():
    real = torch.zeros(3, 2, 4, 4, 3)
    real[1] += 0.5
    real[2] += 1.0
    same = ev.image_coverage(real.clone(), real)
    assert same["IMG_COV"] == 1.0 and same["IMG_MMD"] == pytest.approx(100.0)
    fake = torch.full((2, 2, 4, 4, 3), 0.1)           # both samples nearest to object 0
    r = ev.image_coverage(fake, real)
    assert r["IMG_COV"] == pytest.approx(1 / 3)
    # closest sample to each object: MSE 0.01, 0.16, 0.81 -> PSNR 20, 7.96, 0.92 dB
    expect = np.mean([-10 * math.log10(m) for m in (0.01, 0.16, 0.81)])
    assert r["IMG_MMD"] == pytest.approx(expect, rel=1e-5)
    assert r["IMG_PREC"] == pytest.approx(20.0, rel=1e-5)


class _FakeInception(torch.nn.Module):
    """A stand-in for inception-2015-12-05.pt (same call; 3-d features)."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.to(torch.float32).mean(dim=(2, 3))


def test_results_record_the_fid_network(setup, tmp_path, monkeypatch, capsys):
    from minissd.eval import fid, metrics
    model, test, _ = setup
    monkeypatch.setattr(metrics, "_MODELS", {})
    monkeypatch.setattr(fid, "_MODELS", {})
    monkeypatch.setattr(metrics, "_WARNED", set())
    monkeypatch.setenv("MINISSD_CACHE", str(tmp_path / "cache"))
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))                       # no other network on disk
    try:
        kw = dict(input_views=(64,), n_scenes=1, eval_every=8, **FAST)
        absent = ev.evaluate_reconstruction(model, test, **kw)
        assert absent["FID"] is None and absent["FID_network"] is None
        path = tmp_path / fid.INCEPTION_TS_FILE
        torch.jit.save(torch.jit.script(_FakeInception()), str(path))
        monkeypatch.setenv(fid.INCEPTION_ENV, str(path))
        r = ev.evaluate_reconstruction(model, test, **kw)
        assert math.isfinite(r["FID"])
        assert r["FID_network"] == {"name": "inception-2015-12-05 (TF, TorchScript)",
                                    "comparable": True, "kind": "torchscript"}
        out = tmp_path / "r.json"
        capsys.readouterr()
        from minissd.cli import main
        assert main(["evaluate", "--ckpt", model.save(str(tmp_path / "m.pt")), "--data", test,
                     "--finetune", "none", "--scenes", "1", "--eval-every", "8", "--steps", "2",
                     "--json", str(out)]) == 0
        d = json.loads(out.read_text())
        assert d["fid_network"]["name"] == r["FID_network"]["name"]
        assert d["results"]["FID_network"]["comparable"] is True
        assert "FID/KID features: inception-2015-12-05" in d["table"]
    finally:
        torch.hub.set_dir(old_hub)
