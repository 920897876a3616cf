"""plsc: large-scale face recognition training on PaddlePaddle."""

__version__ = "0.1.0"
