"""Regenerate ddim_v_linear_10.json: a 10-step DDIM run computed by an implementation that
is not minissd's, diffusers' DDIMScheduler (run once by hand; diffusers is not a
dependency of minissd and nothing here is needed to run the tests).

    pip install diffusers && python tests/data/make_ddim_fixture.py

Settings that make diffusers' DDIM the sampler of sampling.py: linear betas 1e-4..2e-2
over T = 1000, v-prediction, "trailing" spacing (999, 899, ..., 99, the same as
ddim_timesteps(1000, 10)), x0 clipped to +-2 with the noise re-derived from the CLIPPED x0
(use_clipped_model_output=True), and alpha = 1 after the last step (set_alpha_to_one).
For eta = 1 the per-step noise is stored too, so the test can feed minissd the same draws.
"""
import json
import os

from diffusers import DDIMScheduler
import torch

T, STEPS = 1000, 10


def toy_v(x, t):
    """The toy 'network' v_hat(x_t, t); tests/test_sampling.py has the same function."""
    return 3.0 * torch.tanh(x) * torch.cos(torch.tensor(t / 400.0)) + 0.1 * x


def run(eta, x_T, noises):
    sch = DDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=2e-2,
                        beta_schedule="linear", prediction_type="v_prediction",
                        timestep_spacing="trailing", clip_sample=True, clip_sample_range=2.0,
                        set_alpha_to_one=True)
    sch.set_timesteps(STEPS)
    x, states, x0s = x_T.clone(), [x_T.tolist()], []
    for i, t in enumerate(sch.timesteps.tolist()):
        out = sch.step(toy_v(x, t), t, x, eta=eta, use_clipped_model_output=True,
                       variance_noise=noises[i] if eta > 0 else None)
        x = out.prev_sample
        x0s.append(out.pred_original_sample.tolist())
        states.append(x.tolist())
    return sch.timesteps.tolist(), states, x0s


def main():
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(4, 3, generator=g)
    noises = [torch.randn(4, 3, generator=g) for _ in range(STEPS - 1)] + [torch.zeros(4, 3)]
    out = {"x_T": x_T.tolist(), "noises": [n.tolist() for n in noises[:-1]]}
    for eta in (0.0, 1.0):
        ts, states, x0s = run(eta, x_T, noises)
        out["timesteps"] = ts
        out[f"eta{eta:g}"] = {"states": states, "x0_hat": x0s}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddim_v_linear_10.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
