"""minissd: a small, readable PyTorch reference implementation of Single-Stage
Diffusion NeRF (Chen et al., ICCV 2023). See README.md for the map of concepts to
modules."""
__version__ = "0.1.0"
