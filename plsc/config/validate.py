"""Validation of one config against the defaults tree (plsc/config/schema.py): every key known, every value of
its type, every registered name known and its keys those its builder takes (read without importing it).

    full = validate(raw)     # a new nested dict with every key of the schema, defaults filled in
"""
import copy
import difflib

from plsc import registry
from plsc.config import schema as S
from plsc.errors import ConfigError


def nearest(name, candidates):
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(types):
    names = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "mapping",
             type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_key(spec, value, path):
    """`value` checked against a Key (type, choices); an int where a float is expected becomes a float."""
    ok = any(
        (isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)))
        for t in spec.types
    )
    if not ok:
        raise ConfigError(f"{path}: expected {_type_name(spec.types)}, got {value!r} ({type(value).__name__})")
    if float in spec.types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if int not in spec.types else value
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{path}: '{value}' is not one of {spec.choices}.{nearest(value, spec.choices)}")
    return copy.deepcopy(value)


# kwargs the engine passes itself; a config must not set them
_INJECTED = {"DATASETS": {"seed"}, "SAMPLERS": {"dataset", "rank", "world_size", "seed"},
             "OPTIMIZERS": {"model", "learning_rate", "multi_precision"}, "LR_SCHEDULERS": {"steps_per_epoch", "epochs"}}


def _check_kwargs(registry_name, name, kwargs, path, extra=()):
    reg = registry.ALL[registry_name]
    try:
        params = reg.params(name)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    injected = _INJECTED.get(registry_name, set())
    if params is not None:
        valid = (set(params) | set(extra)) - injected
        for k in kwargs:
            if k not in valid:
                raise ConfigError(f"{path}.{k}: unknown key for {name}.{nearest(k, valid)} "
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
            raise ConfigError(f"unknown config key '{where}'.{nearest(k, schema)} "
                              f"Valid keys{' of ' + path if path else ''}: {', '.join(schema)}")
    out = {}
    for k, spec in schema.items():
        p = f"{path}.{k}" if path else k
        v = raw.get(k)
        if isinstance(spec, dict):
            out[k] = validate(v, spec, p)
        elif isinstance(spec, S.Key):
            out[k] = copy.deepcopy(spec.default) if k not in raw else check_key(spec, v, p)
        elif isinstance(spec, S.RegisteredList):
            out[k] = _check_registered_list(spec, v, p)
        elif p == "DataLoader.Eval.dataset" and isinstance(v, list):
            out[k] = [_check_registered(spec, item, f"{p}.{i}") for i, item in enumerate(v)]
        else:
            out[k] = _check_registered(spec, v, p)
    return out
