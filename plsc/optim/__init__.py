"""Optimizers, LR schedules and gradient clipping; importing this package registers them."""
from plsc.optim import grad_step, lr, optimizers, sparse  # noqa: F401
