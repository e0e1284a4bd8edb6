"""nerf/fitted.py: a fitted auto-decoder is saved, found by its key and loaded back."""
import pytest
import torch

from minissd.config import get_preset
from minissd.data import srn
from minissd.nerf import fitted
from minissd.nerf.autodecoder import train_autodecoder

CFG = get_preset("smoke", image_res=16, code_res=8, occ_grid_res=8, rays_per_scene=64,
                 n_samples=8, scenes_per_batch=2, occ_warmup=1)


@pytest.fixture
def train(made):
    return srn.SRNDataset(made, resolution=16).stack()              # 2 cars x 4 views


def test_key_names_data_iterations_and_config():
    k = fitted.fit_key(CFG, "cars_train_n2_v4-4v", 30)
    assert k.startswith("cars-autodecoder-smoke-cars_train_n2_v4-4v-30it-")
    assert fitted.fit_key(CFG, "cars_train_n2_v4-4v", 31) != k
    assert fitted.fit_key(CFG, "cars_train_n3_v4-4v", 30) != k
    assert fitted.fit_key(get_preset("smoke", image_res=16, code_res=8, occ_grid_res=8, rays_per_scene=64,
                                     n_samples=8, scenes_per_batch=2, occ_warmup=2), "cars_train_n2_v4-4v", 30) != k


def test_data_id_names_the_folder_and_views():
    assert fitted.data_id("/x/cars_train_n32_v60_r64_s0_f1/", 50) == "cars_train_n32_v60_r64_s0_f1-50v"


def test_save_and_load_give_back_the_fit(train, tmp_path):
    bank, decoder, log = train_autodecoder(CFG, train, 4, log_every=1, progress=False)
    bank.occupancy.grid = torch.rand(bank.occupancy.grid.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    path = fitted.save_fit(str(tmp_path / "fit.pt"), bank, decoder, log, CFG, "k")
    b2, d2, log2 = fitted.load_fit(path, CFG)
    assert torch.equal(b2.step, bank.step) and log2 == log
    assert torch.equal(b2.occupancy.grid, bank.occupancy.grid)
    x, x2 = bank.activated(), b2.activated()
    assert (x - x2).abs().max() < 2e-3 and (x - x2).abs().max() > 0      # float16 codes, no more
    assert torch.equal(b2.codes_, bank.codes_.half().float())
    for (n, p), q in zip(decoder.state_dict().items(), d2.state_dict().values()):
        assert torch.equal(p, q), n
    assert not d2.training


def test_load_or_fit_fits_once_then_loads(train, tmp_path, monkeypatch):
    monkeypatch.setenv("MINISSD_CACHE", str(tmp_path))
    calls = []
    real = fitted.train_autodecoder
    monkeypatch.setattr(fitted, "train_autodecoder", lambda *a, **k: calls.append(1) or real(*a, **k))
    b1, d1, l1 = fitted.load_or_fit(CFG, train, 3, "tiny", log_every=1, progress=False)
    assert len(calls) == 1 and (tmp_path / "models" / (fitted.fit_key(CFG, "tiny", 3) + ".pt")).exists()
    b2, d2, l2 = fitted.load_or_fit(CFG, train, 3, "tiny", log_every=1, progress=False)
    assert len(calls) == 1, "the cached fit should have been loaded"
    assert l2 == l1 and torch.equal(b2.step, b1.step)
    assert torch.allclose(b2.activated(), b1.activated(), atol=2e-3, rtol=0)
    b3, _, l3 = fitted.load_or_fit(CFG, train, 3, "tiny", refit=True, log_every=1, progress=False)
    untimed = lambda log: [{k: v for k, v in r.items() if k != "time"} for r in log]   # noqa: E731
    assert len(calls) == 2 and untimed(l3) == untimed(l1)              # deterministic refit
    assert torch.equal(b3.codes_, b1.codes_)
    fitted.load_or_fit(CFG, train, 2, "tiny", log_every=1, progress=False)
    assert len(calls) == 3                                             # another key: a new fit


def test_a_wrong_file_is_refused(tmp_path):
    torch.save({"format": "something else", "key": "x"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a fitted auto-decoder"):
        fitted.load_fit(str(tmp_path / "x.pt"), CFG)
    (tmp_path / "y.pt").write_bytes(b"truncated")                      # not a torch file at all
    with pytest.raises(ValueError, match=r"y\.pt: not a fitted auto-decoder"):
        fitted.load_fit(str(tmp_path / "y.pt"), CFG)


def test_notebook_02_full_mode_finds_the_shipped_fit():
    """The key hashes the whole config: a changed `laptop` default would orphan the shipped
    fit, and notebook 02's full mode would silently fit for ~15 minutes again."""
    from minissd.ssd.model import shipped_model_file
    key = fitted.fit_key(get_preset("laptop"), "cars_train_n32_v60_r64_s0_f1-50v", 3000)
    assert shipped_model_file(key), key
