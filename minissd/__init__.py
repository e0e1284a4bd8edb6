"""minissd: a small, readable PyTorch reference implementation of Single-Stage
Diffusion NeRF (Chen et al., ICCV 2023). README.md maps the paper's equations and
Algorithm 1 to functions; docs/modules.md lists every module."""
__version__ = "0.1.0"
