"""A small real face-recognition-like dataset made from fonts matplotlib already ships.

Identity = one character; an image = that character rendered at 112x112 in one font face, with
a mild random affine warp, blur, noise and contrast change. Characters in the training split
never appear in the verification split, so verification measures generalisation to unseen
identities, as face verification does. Nothing is downloaded.
"""
import glob
import os

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Faces whose glyphs cover ordinary letters at their Unicode code points.
_SKIP = ("LastResort", "STIXNonUni", "STIXSiz", "cmex10", "cmsy10", "Display")
_CANDIDATES = [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0x391, 0x3CA)] + \
              [chr(c) for c in range(0x410, 0x450)]


def font_files():
    import matplotlib

    root = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    return [f for f in sorted(glob.glob(os.path.join(root, "*.ttf")))
            if not any(s in os.path.basename(f) for s in _SKIP)]


def _coverage(path):
    from matplotlib.ft2font import FT2Font

    return set(FT2Font(path).get_charmap())


def _canonical(ch, font_path, size=48):
    font = ImageFont.truetype(font_path, int(size * 0.7))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), ch, font=font)
    draw.text((size / 2 - (left + right) / 2, size / 2 - (top + bottom) / 2), ch, fill=255, font=font)
    return np.asarray(canvas, dtype=np.float32).reshape(-1) / 255.0


def choose_characters(fonts, min_fonts):
    """Distinct characters drawn by >= `min_fonts` fonts, in a fixed order, with their font lists.

    Homoglyphs (Latin A, Greek Alpha, Cyrillic A ...) would be different identities with the same
    look, and tiny marks (. , ' `) carry almost no signal: both are dropped, judged on a canonical
    rendering in the first font.
    """
    cover = {f: _coverage(f) for f in fonts}
    chars, seen = [], []
    for ch in _CANDIDATES:
        faces = [f for f in fonts if ord(ch) in cover[f]]
        if len(faces) < min_fonts or not ch.strip():
            continue
        v = _canonical(ch, faces[0])
        if v.sum() < 40:  # tiny mark
            continue
        v = (v - v.mean()) / (v.std() + 1e-6)
        if any(float(v @ u) / v.size > 0.85 for u in seen):
            continue
        seen.append(v)
        chars.append((ch, faces))
    return chars


def render(ch, font_path, rng, size=112):
    """One RGB uint8 image of `ch` in the font, with a random mild affine / blur / noise / tint."""
    font = ImageFont.truetype(font_path, int(size * rng.uniform(0.55, 0.7)))
    canvas = Image.new("L", (size * 2, size * 2), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), ch, font=font)
    draw.text((size - (left + right) / 2, size - (top + bottom) / 2), ch, fill=255, font=font)
    glyph = np.asarray(canvas, dtype=np.float32)[size // 2: size // 2 + size, size // 2: size // 2 + size]
    return perturb(glyph, rng)


def perturb(glyph, rng, angle=12.0, scale=(0.85, 1.1), shift=6.0, blur=1.2):
    """A float32 [size, size] glyph mask (0..255) -> an RGB uint8 image: a random rotation within +-angle
    degrees, scale and shift, a Gaussian blur of sigma up to `blur`, a random tint and pixel noise."""
    size = glyph.shape[0]
    m = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-angle, angle), rng.uniform(*scale))
    m[:, 2] += rng.uniform(-shift, shift, size=2)
    glyph = cv2.warpAffine(glyph, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    sigma = rng.uniform(0.0, blur)
    if sigma > 0.3:
        glyph = cv2.GaussianBlur(glyph, (0, 0), sigma)
    fg, bg = rng.uniform(0.55, 1.0, size=3), rng.uniform(0.0, 0.35, size=3)
    img = bg[None, None, :] * 255 + (glyph[:, :, None] / 255.0) * (fg - bg)[None, None, :] * 255
    img += rng.normal(0, 6.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img_rgb, quality=95):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def build(num_train_classes, num_val_classes, images_per_class, num_pairs, seed=0):
    """Return (train [(label, jpeg bytes)], val_images [jpeg bytes, 2 x pairs], issame [pairs])."""
    fonts = font_files()
    chars = choose_characters(fonts, min_fonts=8)
    if len(chars) < num_train_classes + num_val_classes:
        raise ValueError(f"only {len(chars)} characters are drawn by enough fonts; asked for "
                         f"{num_train_classes} + {num_val_classes}")
    order = np.random.default_rng(seed).permutation(len(chars))
    train_chars = [chars[i] for i in order[:num_train_classes]]
    val_chars = [chars[i] for i in order[num_train_classes: num_train_classes + num_val_classes]]
    train = []
    for label, (ch, faces) in enumerate(train_chars):
        rng = np.random.default_rng([seed, 1, label])
        for k in range(images_per_class):
            train.append((label, encode(render(ch, faces[k % len(faces)], rng))))
    rng = np.random.default_rng([seed, 2])
    images, issame = [], []
    for p in range(num_pairs):
        same = p % 2 == 0
        a = int(rng.integers(len(val_chars)))
        b = a if same else int((a + rng.integers(1, len(val_chars))) % len(val_chars))
        (ca, fa), (cb, fb) = val_chars[a], val_chars[b]
        fa_i = int(rng.integers(len(fa)))
        fb_i = int((fa_i + rng.integers(1, len(fb))) % len(fb)) if same else int(rng.integers(len(fb)))
        images += [encode(render(ca, fa[fa_i], rng)), encode(render(cb, fb[fb_i], rng))]
        issame.append(same)
    return train, images, issame, [c for c, _ in train_chars], [c for c, _ in val_chars]
