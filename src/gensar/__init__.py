"""GenSAR: unified generative search and recommendation (Shi et al., arXiv 2504.05730)."""

__version__ = "0.1.0"
