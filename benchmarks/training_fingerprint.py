"""Bit-for-bit check that a refactoring leaves training unchanged.

    OMP_NUM_THREADS=1 PYTHONPATH=<old tree> python benchmarks/training_fingerprint.py dump old.pt
    OMP_NUM_THREADS=1 PYTHONPATH=<new tree> python benchmarks/training_fingerprint.py dump new.pt
    python benchmarks/training_fingerprint.py compare old.pt new.pt

`dump` runs a few smoke iterations from the same seed: 8 of stage 1 and 3 of stage 2 of the
two-stage baseline, 8 single-stage ones (past the occupancy warm-up and a K_in change), and
train_autodecoder with its default and a fast occupancy schedule, plus a fixed-decoder fit;
it saves every code, Adam moment, occupancy grid, weight and logged loss. `compare` lists the
tensors that are not bit-identical.
"""
from __future__ import annotations

import sys

import torch

from minissd.config import get_preset
from minissd.data.procedural import ensure_dataset
from minissd.nerf.autodecoder import train_autodecoder
from minissd.ssd.model import load_training_data
from minissd.ssd.train import Trainer


def trainer_state(tag: str, tr: Trainer, out: dict) -> None:
    out[tag + "/codes"], out[tag + "/exp_avg_sq"] = tr.bank.codes_.clone(), tr.bank.exp_avg_sq.clone()
    out[tag + "/occ"], out[tag + "/mean_code"] = tr.occupancy.grid.clone(), tr.mean_code.clone()
    for name, module in (("dec", tr.decoder), ("prior", tr.prior)):
        out.update({f"{tag}/{name}/{k}": v.clone() for k, v in module.state_dict().items()})
    out[tag + "/loss"] = torch.tensor([[r["loss_rend"], r["loss_diff"], r["lambda_diff"]]
                                       for r in tr.log])


def dump(path: str) -> None:
    torch.set_num_threads(1)
    cfg = get_preset("smoke", iters=8, k_in_schedule=((0, 4), (4, 2)))
    root = ensure_dataset("cars", "train", cfg.data_scenes, cfg.data_views, cfg.image_res,
                          progress=False)
    data, out = load_training_data(root, cfg), {}
    tr = Trainer(cfg, data, mode="two-stage")
    for n, tag in ((8, "stage1"), (3, "stage2")):
        for _ in range(n):
            tr.outer_step()
        trainer_state(tag, tr, out)
    tr = Trainer(cfg, data)
    for _ in range(8):
        tr.outer_step()
    trainer_state("single", tr, out)
    for tag, kw in (("ad", {}), ("ad_occ", dict(occ_warmup=1, occ_every=2))):
        bank, dec, _ = train_autodecoder(cfg, data, 6, progress=False, **kw)
        out[tag + "/codes"], out[tag + "/occ"] = bank.codes_.clone(), bank.occupancy.grid.clone()
        out.update({f"{tag}/dec/{k}": v.clone() for k, v in dec.state_dict().items()})
        fixed, _, _ = train_autodecoder(cfg, data, 3, bank=bank, decoder=dec, train_decoder=False,
                                        progress=False)
        out[tag + "/codes_fixed_dec"] = fixed.codes_.clone()
    torch.save(out, path)
    print(f"{len(out)} tensors -> {path}")


def compare(a_path: str, b_path: str) -> int:
    a, b = torch.load(a_path), torch.load(b_path)
    same = lambda x, y: x.shape == y.shape and torch.equal(x.float().nan_to_num(1234.5),  # noqa: E731
                                                           y.float().nan_to_num(1234.5))
    bad = [k for k in sorted(set(a) | set(b)) if k not in a or k not in b or not same(a[k], b[k])]
    for k in bad:
        print("differs:", k)
    print(f"{len(set(a) | set(b)) - len(bad)}/{len(set(a) | set(b))} tensors bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "dump" and len(sys.argv) == 3:
        dump(sys.argv[2])
    elif cmd == "compare" and len(sys.argv) == 4:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
