"""The baselines' configs (related/codenerf.py CodeNeRFConfig, related/diffrf.py
DiffRFConfig): the SSDNeRF preset's data fields (config.preset_data), the stored-config
round trip (overrides.StoredConfig) and the model keys of the shipped model files."""
from dataclasses import replace

import pytest

from minissd import config
from minissd.related.codenerf import CodeNeRFConfig
from minissd.related.codenerf_fit import model_key
from minissd.related.diffrf import DiffRFConfig, diffrf_preset
from minissd.related.diffrf_train import diffrf_key
from minissd.ssd.model import shipped_model_file


def test_both_baselines_copy_every_data_field_of_the_preset(monkeypatch):
    odd = replace(config.PRESETS["smoke"], views_per_scene=3, seed=5, near_min=0.3, data_views=7)
    monkeypatch.setitem(config.PRESETS, "smoke", odd)
    cfg = CodeNeRFConfig.from_preset("smoke")
    data = config.preset_data("smoke")
    assert data == {"name": "smoke", **{k: getattr(odd, k) for k in config.DATA_FIELDS}}
    assert {k: getattr(cfg, k) for k in data} == data
    assert {k: getattr(DiffRFConfig(**data), k) for k in data} == data
    monkeypatch.undo()
    for name in ("smoke", "laptop"):               # DiffRF's presets, built at import
        data = config.preset_data(name)
        assert {k: getattr(diffrf_preset(name), k) for k in data} == data
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        CodeNeRFConfig.from_preset("nope")


@pytest.mark.parametrize("cls, cfg", [(CodeNeRFConfig, CodeNeRFConfig.from_preset("smoke")),
                                      (DiffRFConfig, diffrf_preset("smoke"))])
def test_stored_config_round_trip_and_refusals(cls, cfg):
    d = cfg.to_dict()
    assert cls.from_dict(d) == cfg
    if "unet_mults" in d:                           # JSON stores tuples as lists
        assert cls.from_dict({**d, "unet_mults": list(d["unet_mults"])}) == cfg
    with pytest.raises(ValueError, match=r"m\.pt: config: unknown config keys \['bogus'\]"):
        cls.from_dict({**d, "bogus": 1}, "m.pt: config")
    with pytest.raises(ValueError, match=cls.__name__):
        cls.from_dict({**d, "iters": "many"})


def test_preset_keys_name_the_shipped_model_files():
    """Model keys hash the whole config: a changed default or copied field would orphan
    the shipped CodeNeRF and DiffRF models (and retrain them on first use)."""
    for name in ("smoke", "laptop"):
        assert shipped_model_file(model_key(CodeNeRFConfig.from_preset(name))), name
        assert shipped_model_file(diffrf_key(diffrf_preset(name))), name
