"""Datasets, transforms and samplers; importing this package registers them."""
from plsc.data import adaface_aug, datasets, random_dataset, samplers, transforms  # noqa: F401
from plsc.data.transforms import build_transforms  # noqa: F401
