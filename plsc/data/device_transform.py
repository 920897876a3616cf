"""The end of a training transform list, run on the device: uint8 batches cross the loader.

A training pipeline such as

    DecodeImage {to_rgb: true} -> [AdaFace augmentations] -> RandFlipImage -> NormalizeImage -> ToCHWImage

is split in two. The loader (workers, shared memory, host->device copy) carries uint8 images, a
quarter of the float32 bytes; the flip, the BGR->RGB swap (when nothing between DecodeImage and
the flip needs RGB), the HWC->CHW transpose and `(x * scale - mean) / std` run on the device as
the first thing of the training step. The result equals the host pipeline bit for bit: the flip
decision is drawn from the same per-sample random stream at the same point, a flip / transpose /
channel swap moves values without changing them, and the normalization is computed in float64
and rounded once to float32, as cv2.addWeighted (the host NormalizeImage) does.

    host, device = split_for_device(compose)     # device is None when the list has no such tail
    item = host(data, rng, source)               # uint8 image (+ its flip decision)
    images = device(batch_images, batch_flips)   # float32 [N, 3, H, W] on the device

Evaluation keeps the host pipeline (its embeddings feed exported models too).
"""
import cv2
import numpy as np
import paddle

from plsc.data.transforms import Compose, DecodeImage, NormalizeImage, RandFlipImage, ToCHWImage
from plsc.errors import DataError
from plsc.cpu_fast import host_view


class DeviceTransform:
    """uint8 [N, H, W, 3] (or [N, 3, H, W]) + per-sample flips -> normalized float32 [N, 3, H, W]."""

    def __init__(self, layout, swap_rb, flip_code, mul, add):
        self.layout, self.swap_rb, self.flip_code = layout, swap_rb, flip_code
        self.mul, self.add = np.asarray(mul, np.float64), np.asarray(add, np.float64)
        self._consts = None

    @property
    def random(self):
        return self.flip_code is not None

    def __call__(self, images, flips=None):
        src = host_view(images)
        if src is not None:  # CPU: cv2 per image (plsc.cpu_fast: Paddle's CPU kernels take ~100x longer here)
            return self._cpu(src, None if flips is None else host_view(flips))
        return self.paddle_body(images, flips)

    def paddle_body(self, images, flips=None):
        """The Paddle ops GPUs run (and the reference of the CPU path's equivalence test)."""
        if self._consts is None:  # on the current device, once
            self._consts = (paddle.to_tensor(self.mul.reshape(1, 3, 1, 1)),
                            paddle.to_tensor(self.add.reshape(1, 3, 1, 1)))
        mul, add = self._consts
        x = images.astype("float64")  # exact for uint8; the ops below have no uint8 kernels on every device
        if self.layout == "HWC":
            x = paddle.transpose(x, [0, 3, 1, 2])
        if self.swap_rb:
            x = paddle.flip(x, [1])
        x = (x * mul + add).astype("float32")
        if flips is not None and self.flip_code is not None:
            axes = {1: [3], 0: [2], -1: [2, 3]}[self.flip_code]
            chosen = flips.astype("bool").reshape([-1, 1, 1, 1])
            x = paddle.where(chosen, paddle.flip(x, axes), x)
        return x

    def _cpu(self, src, flips):
        """The same result with cv2 on CPU tensors: the host pipeline's own ops, per image."""
        n = src.shape[0]
        hw = src.shape[1:3] if self.layout == "HWC" else src.shape[2:4]
        out = paddle.empty([n, 3, *hw], dtype="float32")
        dst = host_view(out)
        for i in range(n):
            img = src[i] if self.layout == "HWC" else np.ascontiguousarray(src[i].transpose(1, 2, 0))
            if flips is not None and self.flip_code is not None and flips[i]:
                img = cv2.flip(img, self.flip_code)
            chans = cv2.split(np.ascontiguousarray(img))
            if self.swap_rb:
                chans = chans[::-1]
            for k, ch in enumerate(chans):
                cv2.addWeighted(ch, float(self.mul[k]), ch, 0.0, float(self.add[k]), dst=dst[i, k], dtype=cv2.CV_32F)
        return out

    def __repr__(self):
        return (f"DeviceTransform(layout={self.layout}, swap_rb={self.swap_rb}, flip_code={self.flip_code}, "
                f"mul={self.mul.round(6).tolist()}, add={self.add.round(6).tolist()})")


class HostPart:
    """What the loader still does per sample: the ops before the tail, and the flip draw."""

    def __init__(self, ops, flip_op):
        self.compose = Compose(ops)
        self.flip_op = flip_op
        self.random = self.compose.random or flip_op is not None

    def __call__(self, data, rng, source):
        img = self.compose(data, rng, source)
        flip = np.uint8(self.flip_op.decide(rng)) if self.flip_op is not None else None
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
            raise DataError(f"{source}: the transforms before RandFlipImage / NormalizeImage produced "
                            f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}; expected a uint8 image")
        return img, flip


def split_for_device(compose):
    """(HostPart, DeviceTransform) for a transform list ending in [RandFlipImage], NormalizeImage and a
    CHW layout; (None, None) when it does not end that way (the whole list then runs on the host)."""
    ops = compose.configured
    tail_start = len(ops)
    while tail_start > 0 and isinstance(ops[tail_start - 1], (RandFlipImage, NormalizeImage, ToCHWImage)):
        tail_start -= 1
    host, tail = ops[:tail_start], ops[tail_start:]
    flips = [op for op in tail if isinstance(op, RandFlipImage)]
    norms = [op for op in tail if isinstance(op, NormalizeImage)]
    chw = [i for i, op in enumerate(tail) if isinstance(op, ToCHWImage)]
    if len(flips) > 1 or len(norms) != 1 or len(chw) > 1 or not host:
        return None, None
    norm_at = tail.index(norms[0])
    if chw:
        layout = "HWC"
        if norms[0].order != ("hwc" if norm_at < chw[0] else "chw"):
            return None, None
    else:
        layout = "CHW"
        if norms[0].order != "chw":
            return None, None
    swap_rb = False
    if len(host) == 1 and isinstance(host[0], DecodeImage) and host[0].to_rgb and not host[0].channel_first:
        host = [DecodeImage(to_rgb=False, channel_first=False)]  # the swap runs on the device
        swap_rb = True
    scale_mul, add = norms[0].exact_coefficients()
    device = DeviceTransform(layout, swap_rb, flips[0].flip_code if flips else None, scale_mul, add)
    return HostPart(host, flips[0] if flips else None), device
