"""The prompt harness: reproducible Stable Diffusion prompt studies."""

__version__ = "0.1.0"
