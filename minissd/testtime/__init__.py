"""Test time, notebooks 06-07: unconditional sampling and turntables (`generate`),
image-guided sampling eqs. (5)-(6) (`guidance`), finetuning eq. (7) (`finetune`), and
reconstruction from posed views with the ablations A0-A3 (`reconstruct`)."""
