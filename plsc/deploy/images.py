"""Photos in: which files an INPUT names, and decoding one with bounded memory and a clear reason on failure.

    paths, notes = gather_inputs(["photos/", "a.jpg", "list.txt"])   # notes: one line per input that adds nothing
    rgb = read_image("a.jpg")                                          # uint8 [H, W, 3] RGB, or DataError

INPUT: an image file, a folder (searched recursively for image extensions, sorted), or a text file listing
one path per line (relative paths are relative to the list file; blank lines and '#' comments skipped).
Decoding reads the header first: an image of more than MAX_PIXELS is decoded at 1/2, 1/4 or 1/8 size
when it is a JPEG (libjpeg scales while decoding) and refused otherwise, so a 20,000 x 20,000 photo never
costs 1.2 GB. A JPEG whose entropy-coded data has no end marker is refused as truncated (OpenCV would
return the grey-filled partial picture with only a warning).
"""
import os
import struct

import cv2
import numpy as np

from plsc.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
MAX_PIXELS = int(os.environ.get("PLSC_MAX_PIXELS", 40_000_000))
MAX_FILE_BYTES = 256 << 20
_LIST_EXTS = (".txt", ".lst", ".list")


def _is_image_name(name):
    return name.lower().endswith(IMAGE_EXTS)


def gather_inputs(inputs):
    """-> (list of image paths in order, list of notes about inputs that add no image)."""
    paths, notes = [], []
    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if _is_image_name(f)]
            if not found:
                notes.append(f"{item}: folder holds no images ({', '.join(IMAGE_EXTS)})")
            paths += found
        elif os.path.isfile(item) and item.lower().endswith(_LIST_EXTS):
            base = os.path.dirname(os.path.abspath(item))
            try:
                with open(item, encoding="utf-8") as f:
                    lines = [ln.strip() for ln in f]
            except (OSError, UnicodeDecodeError) as e:
                notes.append(f"{item}: cannot read the list of paths ({e})")
                continue
            listed = [ln if os.path.isabs(ln) else os.path.join(base, ln)
                      for ln in lines if ln and not ln.startswith("#")]
            if not listed:
                notes.append(f"{item}: list file names no paths")
            paths += listed
        else:
            paths.append(item)  # a missing or unreadable file is reported per path when it is read
    return paths, notes


def _jpeg_info(data):
    """(width, height, complete) of a JPEG from its markers; complete: an end-of-image marker after the scan."""
    pos, size = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return size, False
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 9 <= len(data):
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            size = (w, h)
        if marker == 0xDA:  # start of scan: entropy-coded data until EOI (0xFFD9 cannot occur inside it)
            return size, data.find(b"\xff\xd9", pos + 2 + length) >= 0
        pos += 2 + length
    return size, False


def _png_size(data):
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def read_image(path, max_pixels=None):
    """uint8 RGB [H, W, 3] of an image file; DataError naming the file and the reason."""
    return read_image_scaled(path, max_pixels)[0]


def read_image_scaled(path, max_pixels=None):
    """(image, scale): scale = original pixels per decoded pixel (1, or 2 / 4 / 8 for a large JPEG)."""
    try:
        nbytes = os.path.getsize(path)
        if nbytes > MAX_FILE_BYTES:
            raise DataError(f"{path}: {nbytes} bytes, more than plsc reads for one photo ({MAX_FILE_BYTES})")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_image(data, path, max_pixels, with_scale=True)


def decode_image(data, name="<bytes>", max_pixels=None, with_scale=False):
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise DataError(f"{name}: empty file, not an image")
    size, flag, scale = None, cv2.IMREAD_COLOR_RGB, 1
    if data[:2] == b"\xff\xd8":
        size, complete = _jpeg_info(data)
        if not complete:
            raise DataError(f"{name}: truncated or corrupt JPEG (the image data has no end marker)")
        if size and size[0] * size[1] > max_pixels:
            for factor, reduced in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                    (8, cv2.IMREAD_REDUCED_COLOR_8)):
                if size[0] * size[1] / factor ** 2 <= max_pixels:
                    flag, scale = reduced, factor
                    break
            else:
                raise DataError(f"{name}: {size[0]}x{size[1]} pixels, too large even at 1/8 size "
                                f"(limit {max_pixels} pixels, PLSC_MAX_PIXELS)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        size = _png_size(data)
    if size and flag == cv2.IMREAD_COLOR_RGB and size[0] * size[1] > max_pixels:
        raise DataError(f"{name}: {size[0]}x{size[1]} pixels, more than the limit of {max_pixels} "
                        f"(PLSC_MAX_PIXELS); only JPEGs are decoded at a reduced size")
    if size is None and data[:2] != b"\xff\xd8":
        header = _header_size(data)
        if header and header[0] * header[1] > max_pixels:
            raise DataError(f"{name}: {header[0]}x{header[1]} pixels, more than the limit of {max_pixels} "
                            f"(PLSC_MAX_PIXELS)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None or img.size == 0:
        raise DataError(f"{name}: not an image OpenCV can decode (or a corrupt one)")
    if flag != cv2.IMREAD_COLOR_RGB:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return (img, scale) if with_scale else img


def _header_size(data):
    """Width and height from the header of a non-JPEG/PNG file via Pillow (lazy: no pixels decoded), or None."""
    import io
    import warnings

    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError:
        return (1 << 20, 1 << 20)  # larger than any limit: refused by the caller
    except Exception:
        return None  # left to OpenCV's verdict
