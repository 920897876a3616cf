"""PLSC label files and the path checks the converters share.

label.txt (train):  `relative/path.jpg<TAB>label` per line, label an int >= 0.
label.txt (pairs):  `images/00000000_0.png<TAB>images/00000000_1.png<TAB>issame` (issame 0/1), as
                    PLSC's lfw_style_bin_dataset_converter writes it.
"""
import os

from plsc.data.regular import open_regular
from plsc.errors import DataError

MAX_LABEL = 2**31 - 1  # class ids are int32-sized (millions of identities, never billions)


def safe_relpath(rel, where):
    """Refuse absolute paths and `..` components so a label file cannot reach outside its root."""
    norm = rel.replace("\\", "/")
    if not norm or os.path.isabs(rel) or norm.startswith("/") or ".." in norm.split("/"):
        raise DataError(f"{where}: path {rel!r} must be relative to the image root and must not contain '..'")
    if "\0" in rel:
        raise DataError(f"{where}: path {rel!r} contains a NUL character")
    return rel


def _lines(path):
    with open_regular(path, "label file") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if line.strip():
                yield lineno, line


def _int(text, path, lineno, what):
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(f"{path}: line {lineno}: {what} {text!r} is not an integer") from None


def read_train_labels(path, delimiter="\t"):
    """-> (list of relative paths, list of int labels)."""
    paths, labels = [], []
    for lineno, line in _lines(path):
        fields = line.split(delimiter)
        if len(fields) != 2:
            raise DataError(f"{path}: line {lineno}: expected 'path{delimiter!r}label' (2 fields split by "
                            f"{delimiter!r}), got {line[:120]!r}")
        label = _int(fields[1], path, lineno, "label")
        if not 0 <= label <= MAX_LABEL:
            raise DataError(f"{path}: line {lineno}: label {label} is outside [0, {MAX_LABEL}]")
        paths.append(safe_relpath(fields[0].strip(), f"{path}: line {lineno}"))
        labels.append(label)
    if not paths:
        raise DataError(f"{path}: no samples")
    return paths, labels


def read_pair_labels(path, delimiter="\t"):
    """-> (list of (path1, path2), list of bool issame)."""
    pairs, issame = [], []
    for lineno, line in _lines(path):
        fields = line.split(delimiter)
        if len(fields) != 3:
            raise DataError(f"{path}: line {lineno}: expected 'path1{delimiter!r}path2{delimiter!r}issame', "
                            f"got {line[:120]!r}")
        same = _int(fields[2], path, lineno, "issame")
        if same not in (0, 1):
            raise DataError(f"{path}: line {lineno}: issame must be 0 or 1, got {same}")
        where = f"{path}: line {lineno}"
        pairs.append((safe_relpath(fields[0].strip(), where), safe_relpath(fields[1].strip(), where)))
        issame.append(bool(same))
    if not pairs:
        raise DataError(f"{path}: no pairs")
    return pairs, issame


def check_outputs(paths, force):
    """Refuse to overwrite an existing output unless --force."""
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not force:
        raise DataError(f"output already exists: {existing[0]} (pass --force to overwrite)")


def make_dirs(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create output folder {path}: {e.strerror}") from None


def output_path(out_dir, rel):
    """out_dir/rel, refused when it resolves outside out_dir (a symbolic link planted in the output)."""
    path = os.path.join(out_dir, rel)
    root, real = os.path.realpath(out_dir), os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise DataError(f"refusing to write {path}: it resolves to {real}, outside the output folder {out_dir} "
                        f"(a symbolic link?)")
    return path


def sniff_ext(data):
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:2] == b"BM":
        return ".bmp"
    return ".img"
