"""Load a YAML config: `_base_` inheritance, `-o` overrides, PLSC's keys translated, validation, cross-key rules.

    cfg = load_config("configs/ms1mv3/IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml", ["Global.epochs=1"])

The result is a plain nested dict in which every key of plsc/config/schema.py is present (with its default when
the file does not set it), and `cfg.notes`: one line per accepted key without effect. The steps, one module each:

    files.py         YAML (safe loader, size limits), _base_, -o
    plsc_compat.py   PLSC's keys and spellings -> plsc's schema (notes for keys without effect)
    validate.py      every key known and typed, registered names and their keys (read without importing them)
    rules.py         rules spanning several keys (a config that loads runs, or fails only on data or hardware)

Unknown keys, wrong types and unknown registered names raise ConfigError naming the key and the closest valid
one. No config text is ever evaluated as code. Loading a config does not import Paddle.
"""
import yaml

from plsc.config import schema
from plsc.config.docs import markdown
from plsc.config.files import apply_override, deep_merge, parse_yaml_text, peek, read_yaml
from plsc.config.plsc_compat import translate
from plsc.config.rules import check_all
from plsc.config.validate import validate

__all__ = ["Config", "load_config", "dump_config", "peek", "validate", "markdown", "apply_override", "deep_merge",
           "parse_yaml_text", "read_yaml", "schema"]


class Config(dict):
    """The validated config (a plain nested dict) and `notes`: one line per accepted key that has no effect."""

    notes = ()


def load_config(path, overrides=()):
    raw = read_yaml(path)
    for text in overrides:
        apply_override(raw, text)
    notes = translate(raw)
    cfg = Config(validate(raw))
    check_all(cfg)
    cfg.notes = notes
    return cfg


def _plain(node):
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def dump_config(cfg):
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)
