"""The CUDA path: runs only where a GPU is present (skipped on CPU-only machines and in CI)."""
import pytest
import torch

from minissd.config import get_preset, preset_for_notebook

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_notebook_preset_choice(monkeypatch):
    monkeypatch.delenv("MINISSD_FAST", raising=False)
    monkeypatch.setenv("MINISSD_PRESET", "smoke")
    assert preset_for_notebook().name == "smoke"                    # the variable wins
    monkeypatch.delenv("MINISSD_PRESET")
    want = "gpu" if torch.cuda.is_available() else "laptop"
    assert preset_for_notebook().name == want
    monkeypatch.setenv("MINISSD_FAST", "1")
    assert preset_for_notebook().name == "smoke"


@cuda
def test_train_sample_reconstruct_on_cuda(tmp_path):
    from test_train import tiny_data

    from minissd.ssd.model import Model
    from minissd.ssd.train import Trainer
    from minissd.testtime.generate import sample_codes
    cfg = get_preset("smoke", iters=3, image_res=16, rays_per_scene=64, ckpt_every=3)
    tr = Trainer(cfg, tiny_data(), device="cuda", out_dir=str(tmp_path))
    tr.train(progress=False)
    assert all(torch.isfinite(torch.tensor([r["loss_rend"], r["loss_diff"]])).all() for r in tr.log)
    m = Model.from_trainer(tr)
    m.save(str(tmp_path / "m.pt"))
    back = Model.load(str(tmp_path / "m.pt"), device="cuda")
    x = sample_codes(back, 2, steps=3, generator=torch.Generator("cuda").manual_seed(0))
    assert x.device.type == "cuda" and torch.isfinite(x).all()
