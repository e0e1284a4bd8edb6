"""The latent diffusion prior, notebook 03: noise schedule, v-prediction and the
diffusion loss eq. (2) (`diffusion`), the denoiser phi (`unet`), the DDIM sampler
(`sampling`), weight EMA (`ema`) and the 2-D toy used to teach it (`toy2d`)."""
