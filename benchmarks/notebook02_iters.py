"""How many auto-decoder iterations notebook 02's full mode needs (issue 18, item 6).

Runs notebook 02's full-mode fit (`laptop` preset, N_SCENES cars x 50 training views + 10
held-out, batches of 8 scenes x 512 rays) for up to --iters iterations and prints, every
--every iterations, the CPU-seconds so far (time.process_time) and the held-out PSNR the
notebook asserts on (mean over all held-out views of every car). At --sparse-from it also
fits the notebook's 3-view codes for 2 cars against that decoder (--sparse-iters
iterations) and checks the notebook's asserts on them. Run with one thread, niced:

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 10 python benchmarks/notebook02_iters.py \
        --scenes 16 --iters 1200 --every 200 --sparse-from 1000 --sparse-iters 400

(--amp auto, the laptop preset's since 2026-12-06: bf16 autocast of the decoder MLP on a CPU
that runs it fast.)
"""
import argparse
import copy
import time

import torch

from minissd.config import get_preset
from minissd.data import procedural, srn
from minissd.nerf.autodecoder import heldout_psnr, train_autodecoder
from minissd.nerf.triplane import CodeBank


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=32)
    ap.add_argument("--iters", type=int, default=1200)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--sparse-from", type=int, default=1000)
    ap.add_argument("--sparse-iters", type=int, default=400)
    ap.add_argument("--amp", default="auto", help="cfg.amp: the laptop preset's (auto: bf16 where fast)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = get_preset("laptop", amp=args.amp)
    n_train, n_held = 50, 10
    root = procedural.ensure_dataset("cars", "train", n_scenes=args.scenes, n_views=n_train + n_held,
                                     resolution=cfg.image_res, seed=0, progress=False)
    train = srn.SRNDataset(root, views=list(range(n_train))).stack()
    held = srn.SRNDataset(root, views=list(range(n_train, n_train + n_held))).stack()
    t0 = time.process_time()
    saved = {}

    def evaluate(it, bank, decoder):
        done = it + 1
        if done % args.every and done != args.sparse_from:
            return
        rng = torch.get_rng_state()                      # leave the training's draws untouched
        t_fit = time.process_time() - t0
        b, d = copy.deepcopy(bank), copy.deepcopy(decoder).eval()
        b.refresh_occupancy(d, cfg, batch=8, generator=torch.Generator().manual_seed(1))
        t1 = time.process_time()
        with torch.no_grad():
            p = heldout_psnr(d, b.activated(), held, cfg, b.occupancy)
        print(f"iter {done:5d}: fit {t_fit:7.1f} CPU-s ({t_fit / done:.3f} per iteration); held-out PSNR "
              f"mean {p.mean():.2f} dB, min {p.min():.2f} (eval {time.process_time() - t1:.1f} CPU-s)",
              flush=True)
        if done == args.sparse_from:
            saved.update(bank=b, decoder=d, psnr=p)
        torch.set_rng_state(rng)

    train_autodecoder(cfg, train, args.iters, log_every=1, progress=False, callback=evaluate)
    if not saved:
        return
    n_sp, views = 2, [0, n_train // 2, n_train - 1]
    sparse = srn.SRNDataset(root, views=views).stack()
    sparse = {k: (v[:n_sp] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in sparse.items()}
    held_sub = {k: (v[:n_sp] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in held.items()}
    t1 = time.process_time()
    sp_bank = CodeBank(n_sp, cfg.code_ch, cfg.code_res, generator=torch.Generator().manual_seed(0))
    sp_bank, _, sp_log = train_autodecoder(cfg, sparse, args.sparse_iters, bank=sp_bank,
                                           decoder=saved["decoder"], train_decoder=False,
                                           log_every=10, progress=False)
    t_sp = time.process_time() - t1
    p_sp = heldout_psnr(saved["decoder"], sp_bank.activated(), held_sub, cfg)
    x_all = saved["bank"].activated()
    diff = (sp_bank.activated()[0] - x_all[0]).abs().mean()
    print(f"sparse ({args.sparse_iters} iterations from iteration {args.sparse_from}): {t_sp:.1f} CPU-s "
          f"({t_sp / args.sparse_iters:.3f} per iteration); training-ray PSNR {sp_log[-1]['psnr']:.1f}; "
          f"held-out 3 views {[round(v, 1) for v in p_sp.tolist()]} vs all views "
          f"{[round(v, 1) for v in saved['psnr'][:n_sp].tolist()]}; "
          f"asserts: sparse < full {bool((p_sp < saved['psnr'][:n_sp]).all())}, "
          f"mean |3-view - full| {diff:.3f} > 0.01 {bool(diff > 0.01)}")
    print(f"total {time.process_time():.1f} CPU-s in this process")


if __name__ == "__main__":
    main()
