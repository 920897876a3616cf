"""Datasets, transforms and samplers; importing this package registers them."""
from plsc.data import random_dataset  # noqa: F401
