"""Config files: the YAML reader (safe, size-limited, `5e-4` as a float), `_base_` inheritance and `-o` overrides.

Everything here works on the raw nested dict, before translation (plsc/config/plsc_compat.py) and validation.
"""
import copy
import os
import re

import yaml

from plsc.errors import ConfigError

# ---------------------------------------------------------------- YAML with numbers like 5e-4
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `5e-4` (no dot) as a float, as users write it."""


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
# PLSC's configs write Python's None (e.g. Export.input_shape: [None, 3, 112, 112]): read it as null
_Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^None$"), ["N"])


MAX_VALUES, MAX_DEPTH = 100_000, 64  # a config is small; YAML aliases must not expand it beyond this


def _check_size(data, source):
    """Count values as if aliases were expanded (`&a [*a]` and alias bombs stop at the limits)."""
    count, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise ConfigError(f"{source}: the YAML expands to more than {MAX_VALUES} values or nests deeper than "
                              f"{MAX_DEPTH} levels (recursive or repeated aliases?)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for kv in node.items() for v in kv)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return data


def _check_brackets(text, source):
    """Refuse deeply nested flow collections before PyYAML recurses through them."""
    depth = 0
    for ch in re.sub(r"[^\[\]{}]", "", text):
        depth = depth + 1 if ch in "[{" else max(0, depth - 1)
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: '[' / '{{' nested deeper than {MAX_DEPTH} levels")


def parse_yaml_text(text, source):
    _check_brackets(text, source)
    try:
        return _check_size(yaml.load(text, Loader=_Loader), source)
    except RecursionError:
        raise ConfigError(f"{source}: the YAML nests too deeply") from None
    except ValueError as e:  # a constructor refusing a scalar, e.g. an integer of more than 4300 digits
        raise ConfigError(f"{source}: bad YAML value: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if ctx and cmark:  # e.g. an unclosed '[': say where it was opened
            problem += f" ({ctx} opened at line {cmark.line + 1}, column {cmark.column + 1})"
        raise ConfigError(f"YAML syntax error at {where}: {problem}") from None


# ---------------------------------------------------------------- files and _base_
def read_yaml(path, stack=()):
    """The mapping of a YAML file with its `_base_` files merged under it (stack: the files including it)."""
    stack = list(stack)
    path = os.path.abspath(path)
    if path in stack:
        chain = " -> ".join(stack + [path])
        raise ConfigError(f"_base_ cycle: {chain}")
    if not os.path.isfile(path):
        where = f" (a _base_ of {stack[-1]})" if stack else ""
        raise ConfigError(f"config file not found: {path}{where}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    data = parse_yaml_text(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths")
    merged = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = deep_merge(merged, read_yaml(base_path, stack + [path]))
    return deep_merge(merged, data)


def deep_merge(base, override):
    """Merge `override` into a copy of `base`: mappings merge key by key, everything else replaces.

    A mapping that names a different registered builder (`name:` differs) replaces the base mapping
    whole, so the base's builder-specific keys do not leak into the new builder.
    """
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    if "name" in base and "name" in override and base["name"] != override["name"]:
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if k in out else copy.deepcopy(v)
    return out


# ---------------------------------------------------------------- -o overrides
def apply_override(cfg, text):
    """Apply one `Section.key.sub=value` (list items by index) to the raw config dict in place."""
    if "=" not in text:
        raise ConfigError(f"-o '{text}': expected Key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(p == "" for p in parts):
        raise ConfigError(f"-o '{text}': bad key '{key}'")
    value = parse_yaml_text(raw, f"-o {key}") if raw.strip() else None
    node = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not re.fullmatch(r"-?\d+", part):
                raise ConfigError(f"-o {key}: '{'.'.join(parts[:i])}' is a list; use an index, not '{part}'")
            idx = int(part)
            if not -len(node) <= idx < len(node):
                raise ConfigError(f"-o {key}: index {idx} out of range, '{'.'.join(parts[:i])}' has {len(node)} items")
            if last:
                node[idx] = value
            else:
                if node[idx] is None:
                    node[idx] = {}
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"-o {key}: '{where}' cannot be set because its parent is a {type(node).__name__}")
    return cfg


def peek(path, overrides, keys, default):
    """The raw value at `keys` of a config file + overrides, without validating (nor importing paddle);
    `default` when the file cannot be read or the key is absent (validation reports errors later)."""
    try:
        node = read_yaml(path)
        for text in overrides:
            apply_override(node, text)
        for k in keys:
            node = node[k]
        return node
    except (ConfigError, KeyError, TypeError, IndexError):
        return default
