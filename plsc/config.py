"""Load a YAML config: `_base_` inheritance, `-o` overrides, validation against the schema.

    cfg = load_config("configs/ms1mv3/IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml", ["Global.epochs=1"])

The result is a plain nested dict in which every key of plsc/config_schema.py is present (with
its default when the file does not set it). Unknown keys, wrong types and unknown registered
names raise ConfigError naming the key and the closest valid one. No config text is ever
evaluated as code: values are YAML scalars/lists/mappings.
"""
import copy
import difflib
import inspect
import os
import re
import sys

import yaml

from plsc import config_schema as S
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
def _read_yaml(path, stack):
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
        merged = deep_merge(merged, _read_yaml(base_path, stack + [path]))
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


# ---------------------------------------------------------------- validation
def _nearest(name, candidates):
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(types):
    names = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "mapping",
             type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_key(spec, value, path):
    ok = any(
        (isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)))
        for t in spec.types
    )
    if not ok:
        raise ConfigError(f"{path}: expected {_type_name(spec.types)}, got {value!r} ({type(value).__name__})")
    if float in spec.types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if int not in spec.types else value
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{path}: '{value}' is not one of {spec.choices}.{_nearest(value, spec.choices)}")
    return copy.deepcopy(value)


def _builder_params(builder):
    """Names the builder accepts (None when it takes arbitrary **kwargs).

    A class whose __init__ forwards **kwargs to its base accepts its own names plus the base's.
    """
    targets = [c.__init__ for c in builder.__mro__ if "__init__" in vars(c)] if inspect.isclass(builder) else [builder]
    names = []
    for target in targets:
        if target is object.__init__:
            return None
        params = inspect.signature(target).parameters.values()
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


# kwargs the engine passes itself; a config must not set them
_INJECTED = {"DATASETS": {"seed"}, "SAMPLERS": {"dataset", "rank", "world_size", "seed"},
             "OPTIMIZERS": {"model", "learning_rate", "multi_precision"}, "LR_SCHEDULERS": {"steps_per_epoch", "epochs"}}


def _check_kwargs(registry_name, name, kwargs, path, extra=()):
    from plsc import registry as R

    registry = getattr(R, registry_name)
    try:
        builder = registry.get(name)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    params = _builder_params(builder)
    injected = _INJECTED.get(registry_name, set())
    if params is not None:
        valid = (set(params) | set(extra)) - injected
        for k in kwargs:
            if k not in valid:
                raise ConfigError(f"{path}.{k}: unknown key for {name}.{_nearest(k, valid)} "
                                  f"Valid keys: {', '.join(sorted(valid))}")


def _check_registered(spec, value, path):
    if value is None:
        value = copy.deepcopy(spec.default)
        if value is None:
            return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ConfigError(f"{path}: expected a mapping with a 'name' key, got {value!r}")
    value = copy.deepcopy(value)
    kwargs = {k: v for k, v in value.items() if k != "name"}
    extra = S.REGISTERED_KWARGS.get(spec.registry, set()) - {"name"}
    _check_kwargs(spec.registry, value["name"], kwargs, path, extra)
    if spec.registry == "DATASETS" and value.get("transform_ops") is not None:
        value["transform_ops"] = _check_registered_list(
            S.RegisteredList("TRANSFORMS", None, ""), value["transform_ops"], f"{path}.transform_ops")
    if spec.registry == "OPTIMIZERS" and value.get("grad_clip") is not None:
        value["grad_clip"] = _check_registered(S.Registered("GRAD_CLIPS", None, ""), value["grad_clip"],
                                               f"{path}.grad_clip")
    return value


def _check_registered_list(spec, value, path):
    if value is None:
        return copy.deepcopy(spec.default)
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of '- Name: {{...}}' items, got {value!r}")
    out = []
    for i, item in enumerate(value):
        p = f"{path}.{i}"
        if isinstance(item, str):
            item = {item: None}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"{p}: expected a single '- Name: {{kwargs}}' mapping, got {item!r}")
        (name, kwargs), = item.items()
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{p}.{name}: expected a mapping of options, got {kwargs!r}")
        _check_kwargs(spec.registry, name, kwargs, f"{p}.{name}")
        out.append({name: copy.deepcopy(kwargs)})
    return out


def validate(raw, schema=None, path=""):
    """Return a full config (defaults filled) or raise ConfigError for the first bad key."""
    schema = S.SCHEMA if schema is None else schema
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {raw!r}")
    for k in raw:
        if k not in schema:
            where = f"{path}.{k}" if path else k
            raise ConfigError(f"unknown config key '{where}'.{_nearest(k, schema)} "
                              f"Valid keys{' of ' + path if path else ''}: {', '.join(schema)}")
    out = {}
    for k, spec in schema.items():
        p = f"{path}.{k}" if path else k
        v = raw.get(k)
        if isinstance(spec, dict):
            out[k] = validate(v, spec, p)
        elif isinstance(spec, S.Key):
            out[k] = copy.deepcopy(spec.default) if k not in raw else _check_key(spec, v, p)
        elif isinstance(spec, S.RegisteredList):
            out[k] = _check_registered_list(spec, v, p)
        elif p == "DataLoader.Eval.dataset" and isinstance(v, list):
            out[k] = [_check_registered(spec, item, f"{p}.{i}") for i, item in enumerate(v)]
        else:
            out[k] = _check_registered(spec, v, p)
    return out


class Config(dict):
    """The validated config (a plain nested dict) and `notes`: one line per accepted key that has no effect."""

    notes = ()


# PLSC: an FP16 section without a level means O2; an EMA section means an EMA
_SECTION_DEFAULTS = {("FP16", "level"): "O2", ("EMA", "enabled"): True}


def _presence_defaults(raw):
    for (section, key), value in _SECTION_DEFAULTS.items():
        if section in raw and raw[section] is None:  # "FP16:" with nothing under it
            raw[section] = {key: value}
        elif isinstance(raw.get(section), dict) and key not in raw[section]:
            raw[section][key] = value


def _notes(raw):
    """Keys PLSC configs set that change nothing in plsc: one line each, naming the key and why."""
    g = raw.get("Global") if isinstance(raw.get("Global"), dict) else {}
    notes = []
    if g.get("use_dali"):
        notes.append("Global.use_dali has no effect: plsc's own loader reads the data (PLSC builds no DALI loader "
                     "for face recognition either)")
    if (raw.get("Loss") or {}).get("Eval"):
        notes.append("Loss.Eval has no effect: evaluation is verification on embeddings (PLSC's face evaluation "
                     "does not use it either)")
    if (raw.get("Metric") or {}).get("Train"):
        notes.append("Metric.Train is not computed: PLSC's TopkAcc over the sampled, shard-local logits does not "
                     "measure a sharded classifier; the training loss is logged instead")
    return notes


def load_config(path, overrides=()):
    raw = _read_yaml(path, [])
    for text in overrides:
        apply_override(raw, text)
    _presence_defaults(raw)
    cfg = Config(validate(raw))
    check_finite(cfg)
    check_finetune(cfg)
    check_distill(cfg)
    cfg.notes = _notes(raw)
    return cfg


def check_finite(node, path=""):
    """Every number of the config is finite: a NaN or infinite learning rate, margin, scale, weight decay,
    momentum, clip norm or loss weight cannot train (ConfigError naming the key)."""
    import math

    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        p = f"{path}.{k}" if path else str(k)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{p}: {v} is not a finite number (a run cannot train with it); set a finite value")
        check_finite(v, p)


def check_distill(cfg):
    d = cfg["Distill"]
    if d["teacher"] is not None and not d["weight"] > 0:
        raise ConfigError(f"Distill.weight must be > 0 when Distill.teacher is set, got {d['weight']}")


def check_finetune(cfg):
    """Global.finetune's recipe is complete and in range (every plsc backbone has 4 stages)."""
    g, f = cfg["Global"], cfg["FineTune"]
    if not g["finetune"]:
        return
    if not g["pretrained_model"]:
        raise ConfigError("Global.finetune is true but Global.pretrained_model is not set: name the released or "
                          "trained model to fine-tune (a plsc checkpoint directory, or plsc-import's output)")
    n = f["freeze_stages"]
    if not (n == "all" or (isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 4)):
        raise ConfigError(f"FineTune.freeze_stages={n!r}: plsc backbones have 4 stages; give 0..4, or 'all' (only "
                          f"the neck trains)")
    if not f["backbone_lr_mult"] >= 0:
        raise ConfigError(f"FineTune.backbone_lr_mult must be >= 0, got {f['backbone_lr_mult']}")
    if f["head_warmup_steps"] < 0:
        raise ConfigError(f"FineTune.head_warmup_steps must be >= 0, got {f['head_warmup_steps']}")


def peek(path, overrides, keys, default):
    """The raw value at `keys` of a config file + overrides, without validating (nor importing paddle);
    `default` when the file cannot be read or the key is absent (validation reports errors later)."""
    try:
        node = _read_yaml(path, [])
        for text in overrides:
            apply_override(node, text)
        for k in keys:
            node = node[k]
        return node
    except (ConfigError, KeyError, TypeError, IndexError):
        return default


def _plain(node):
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def dump_config(cfg):
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------- docs/config.md
def _describe(spec):
    if isinstance(spec, S.Key):
        return spec.default, spec.doc + (f" ({' / '.join(map(str, spec.choices))})" if spec.choices else "")
    return spec.default, spec.doc


def markdown():
    lines = ["# Config reference", "",
             "Generated from `plsc/config_schema.py` by `python -m plsc.config --markdown`; do not edit.",
             "Every key has the default shown. Override any key with `-o Section.key=value`; list items by index",
             "(`-o Loss.Train.0.MarginLoss.m2=0.4`); a mapping value replaces the whole subtree.", ""]

    def walk(node, path):
        rows = []
        for k, spec in node.items():
            p = f"{path}.{k}" if path else k
            if isinstance(spec, dict):
                rows += walk(spec, p)
            else:
                default, doc = _describe(spec)
                d = yaml.safe_dump(default, default_flow_style=True).strip().replace("\n...", "").replace("|", "\\|")
                rows.append(f"| `{p}` | `{d}` | {doc} |")
        return rows

    for section, node in S.SCHEMA.items():
        lines += [f"## {section}", "", "| key | default | meaning |", "|---|---|---|"]
        lines += walk(node, section) if isinstance(node, dict) else walk({section: node}, "")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown())
    else:
        print("usage: python -m plsc.config --markdown", file=sys.stderr)
        sys.exit(2)
