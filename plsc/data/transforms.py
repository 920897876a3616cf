"""Image transforms configured as `transform_ops` lists, e.g.

    [{"DecodeImage": {"to_rgb": True}}, {"RandFlipImage": {"flip_code": 1}},
     {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5] * 3, "std": [0.5] * 3}}, {"ToCHWImage": None}]

Every op is called as `op(img, rng)`; `rng` is a SampleRandom seeded from exactly (seed, epoch, index)
by the dataset, so augmentation is reproducible on every rank and worker. Ops use only
rng.random(), rng.uniform(a, b), rng.integers(lo, hi) and rng.permutation(n), which a numpy
Generator provides too. Float work is done by cv2 (numpy's uint8->float ufuncs are ~4x slower).
"""
import fractions
import random
import re

import cv2
import numpy as np

from plsc.errors import ConfigError, DataError
from plsc.registry import TRANSFORMS

_FRACTION = re.compile(r"^\s*[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?\s*(?:/\s*[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?\s*)?$")


def parse_number(value, what):
    """A float from a number or a string 'a' / 'a/b' (as PLSC configs write `scale: 1.0/255.0`); no eval."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _FRACTION.match(value):
        num, _, den = value.partition("/")
        den_v = float(den) if den.strip() else 1.0
        if den_v == 0:
            raise ConfigError(f"{what}: division by zero in {value!r}")
        return float(fractions.Fraction(num.strip()) / fractions.Fraction(den.strip() or "1"))
    raise ConfigError(f"{what}: expected a number or a fraction like '1.0/255.0', got {value!r}")


class SampleRandom(random.Random):
    """Python's Mersenne Twister seeded from the exact tuple (seed, epoch, index): ~5 us to create,
    against ~20 us for np.random.default_rng([seed, epoch, index])."""

    def __init__(self, seed, epoch, index):
        m = (1 << 64) - 1
        super().__init__(((seed & m) << 128) | ((epoch & m) << 64) | (index & m))

    def integers(self, low, high):
        return self.randrange(low, high)

    def permutation(self, n):
        order = list(range(n))
        self.shuffle(order)
        return order


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes to RGB directly


@TRANSFORMS.register()
class DecodeImage:
    """Encoded bytes -> uint8 HWC image (cv2, BGR unless to_rgb; CHW if channel_first)."""

    random = False

    def __init__(self, to_rgb=True, channel_first=False):
        self.to_rgb, self.channel_first = bool(to_rgb), bool(channel_first)

    def __call__(self, data, rng):
        if isinstance(data, np.ndarray) and data.ndim == 3:
            img = data
        else:
            buf = np.frombuffer(data, dtype=np.uint8)
            rgb_direct = self.to_rgb and _IMREAD_RGB is not None  # the same pixels, one pass fewer
            img = cv2.imdecode(buf, _IMREAD_RGB if rgb_direct else cv2.IMREAD_COLOR) if buf.size else None
            if img is None:
                raise DataError("cannot decode the image (not a JPEG/PNG/BMP or corrupt)")
            if self.to_rgb and not rgb_direct:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return img.transpose(2, 0, 1) if self.channel_first else img


@TRANSFORMS.register()
class RandFlipImage:
    """Flip with probability `prob`; flip_code 1 horizontal, 0 vertical, -1 both (cv2 convention)."""

    random = True

    def __init__(self, flip_code=1, prob=0.5):
        if flip_code not in (-1, 0, 1):
            raise ConfigError(f"RandFlipImage.flip_code must be 1, 0 or -1, got {flip_code!r}")
        self.flip_code, self.prob = flip_code, float(prob)

    def decide(self, rng):
        """Whether this sample is flipped (the op's one random draw)."""
        return rng.random() < self.prob

    def __call__(self, img, rng):
        if not self.decide(rng):
            return img
        if img.shape[0] == 3 and img.shape[-1] != 3:  # CHW (DecodeImage channel_first: True)
            axes = {1: (2,), 0: (1,), -1: (1, 2)}[self.flip_code]
            return np.ascontiguousarray(np.flip(img, axes))
        return cv2.flip(img, self.flip_code)


@TRANSFORMS.register()
class NormalizeImage:
    """(img * scale - mean) / std as float32, fused into one multiply-add. order 'hwc' (or '') / 'chw'."""

    random = False

    def __init__(self, scale="1.0/255.0", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), order="", to_chw=False):
        if order not in ("", "hwc", "chw"):
            raise ConfigError(f"NormalizeImage.order must be '', 'hwc' or 'chw', got {order!r}")
        scale = parse_number(scale, "NormalizeImage.scale")
        mean = np.asarray([parse_number(m, "NormalizeImage.mean") for m in mean], np.float32)
        std = np.asarray([parse_number(s, "NormalizeImage.std") for s in std], np.float32)
        if mean.size != 3 or std.size != 3 or np.any(std == 0):
            raise ConfigError("NormalizeImage: mean and std need 3 values and std must be non-zero")
        self.order, self.to_chw = order or "hwc", bool(to_chw)
        self.mul = (scale / std).astype(np.float32)
        self.add = (-mean / std).astype(np.float32)

    def exact_coefficients(self):
        """(mul, add) per channel as float64: the values this op's cv2.addWeighted computes with."""
        return self.mul.astype(np.float64), self.add.astype(np.float64)

    def __call__(self, img, rng):
        chans = list(img) if self.order == "chw" else cv2.split(np.ascontiguousarray(img))
        if len(chans) != 3:
            raise DataError(f"NormalizeImage expects 3 channels, got an image of shape {img.shape}")
        if self.order == "chw" or self.to_chw:
            out = np.empty((3,) + chans[0].shape, np.float32)
            for k, ch in enumerate(chans):
                cv2.addWeighted(ch, float(self.mul[k]), ch, 0.0, float(self.add[k]), dst=out[k], dtype=cv2.CV_32F)
            return out
        return cv2.merge([cv2.addWeighted(ch, float(self.mul[k]), ch, 0.0, float(self.add[k]), dtype=cv2.CV_32F)
                          for k, ch in enumerate(chans)])


@TRANSFORMS.register()
class ToCHWImage:
    random = False

    def __call__(self, img, rng):
        return np.ascontiguousarray(img.transpose(2, 0, 1))


class Compose:
    def __init__(self, ops):
        ops = list(ops)
        self.configured = list(ops)  # as configured, before the fusion below (plsc.data.device_transform reads it)
        # NormalizeImage directly followed by ToCHWImage: transpose inside the multiply (one pass).
        for i in range(len(ops) - 1):
            if isinstance(ops[i], NormalizeImage) and isinstance(ops[i + 1], ToCHWImage) and ops[i].order == "hwc":
                ops[i].to_chw = True
                ops[i + 1] = _Identity()
        self.ops = [op for op in ops if not isinstance(op, _Identity)]
        self.random = any(getattr(op, "random", True) for op in self.ops)

    def __call__(self, data, rng, source):
        try:
            for op in self.ops:
                data = op(data, rng)
        except DataError as e:
            raise DataError(f"{source}: {e}") from None
        except cv2.error as e:
            raise DataError(f"{source}: image transform failed ({str(e).strip()[:200]})") from None
        return data


class _Identity:
    random = False

    def __call__(self, img, rng):
        return img


def build_transforms(ops, seed=0):
    """[{Name: {kwargs}} ...] -> Compose. `seed` is kept for symmetry with the datasets (rng is per sample)."""
    built = []
    for i, item in enumerate(ops or []):
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"transform_ops[{i}]: expected a mapping {{Name: {{kwargs}}}}, got {item!r}")
        name, kwargs = next(iter(item.items()))
        cls = TRANSFORMS.get(name)
        try:
            built.append(cls(**(kwargs or {})))
        except TypeError as e:
            raise ConfigError(f"transform_ops[{i}] {name}: {e}") from None
    return Compose(built)


DEFAULT_OPS = [
    {"DecodeImage": {"to_rgb": True}},
    {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}},
    {"ToCHWImage": None},
]
