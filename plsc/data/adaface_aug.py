"""AdaFace's training augmentations (uint8 HWC in, uint8 HWC out), each applied with its own probability.

    - AdaFaceCrop {prob}: a RandomResizedCrop box (scale (0.2, 1), ratio (3/4, 4/3)) is kept at its
      position and everything outside it is zeroed (the crop pasted back on a black canvas).
    - AdaFaceLowRes {prob}: downscale both sides by U(0.2, 1), then back up, each resize with a
      random interpolation (nearest, linear, area, cubic, lanczos).
    - AdaFacePhotometric {prob, brightness, contrast, saturation}: ColorJitter-style factors drawn
      from U(1 - x, 1 + x), applied in a random order (expects RGB, i.e. DecodeImage to_rgb: True).
Place them after DecodeImage and before NormalizeImage.
"""
import math

import cv2
import numpy as np

from plsc.errors import ConfigError
from plsc.registry import TRANSFORMS

_INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)


def _prob(p, name):
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name}.prob must be in [0, 1], got {p}")
    return p


def random_resized_crop_box(rng, height, width, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, h, w) as torchvision's RandomResizedCrop.get_params draws them."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: central crop with the ratio clamped
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@TRANSFORMS.register()
class AdaFaceCrop:
    random = True

    def __init__(self, prob=0.2, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
        self.prob, self.scale, self.ratio = _prob(prob, "AdaFaceCrop"), tuple(scale), tuple(ratio)

    def __call__(self, img, rng):
        if rng.random() >= self.prob:
            return img
        top, left, h, w = random_resized_crop_box(rng, img.shape[0], img.shape[1], self.scale, self.ratio)
        out = np.zeros_like(img)
        out[top:top + h, left:left + w] = img[top:top + h, left:left + w]
        return out


@TRANSFORMS.register()
class AdaFaceLowRes:
    random = True

    def __init__(self, prob=0.2, min_ratio=0.2):
        self.prob, self.min_ratio = _prob(prob, "AdaFaceLowRes"), float(min_ratio)

    def __call__(self, img, rng):
        if rng.random() >= self.prob:
            return img
        h, w = img.shape[:2]
        r = rng.uniform(self.min_ratio, 1.0)
        small = (max(1, int(r * w)), max(1, int(r * h)))
        down = _INTERPOLATIONS[int(rng.integers(0, len(_INTERPOLATIONS)))]
        up = _INTERPOLATIONS[int(rng.integers(0, len(_INTERPOLATIONS)))]
        tiny = cv2.resize(np.ascontiguousarray(img), small, interpolation=down)
        return cv2.resize(tiny, (w, h), interpolation=up)


@TRANSFORMS.register()
class AdaFacePhotometric:
    random = True

    def __init__(self, prob=0.2, brightness=0.5, contrast=0.5, saturation=0.5):
        self.prob = _prob(prob, "AdaFacePhotometric")
        self.jitter = (float(brightness), float(contrast), float(saturation))

    def __call__(self, img, rng):
        if rng.random() >= self.prob:
            return img
        out = np.ascontiguousarray(img)
        factors = [rng.uniform(max(0.0, 1 - j), 1 + j) for j in self.jitter]
        for k in rng.permutation(3):  # random order; each step rounds and saturates to uint8 like PIL
            f = factors[k]
            if k == 0:  # brightness: blend with black
                out = cv2.addWeighted(out, f, out, 0.0, 0.0)
            elif k == 1:  # contrast: blend with the mean gray level
                mean = float(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).mean())
                out = cv2.addWeighted(out, f, out, 0.0, (1.0 - f) * mean)
            else:  # saturation: blend with the gray image
                gray = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
                out = cv2.addWeighted(out, f, gray, 1.0 - f, 0.0)
        return out
