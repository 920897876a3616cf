"""Optimizers, LR schedules and gradient clipping; importing this package registers them."""
from plsc.optim import lr, optimizers  # noqa: F401
