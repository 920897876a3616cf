"""docs/config.md: the defaults tree (plsc/config/schema.py) and the PLSC keys translated at the door, as tables.

    python -m plsc.config --markdown > docs/config.md
"""
import yaml

from plsc.config import schema as S
from plsc.config.plsc_compat import PLSC_KEYS


def _describe(spec):
    if isinstance(spec, S.Key):
        return spec.default, spec.doc + (f" ({' / '.join(map(str, spec.choices))})" if spec.choices else "")
    return spec.default, spec.doc


def _row(path, spec):
    default, doc = _describe(spec)
    d = yaml.safe_dump(default, default_flow_style=True).strip().replace("\n...", "").replace("|", "\\|")
    return f"| `{path}` | `{d}` | {doc} |"


def markdown():
    lines = ["# Config reference", "",
             "Generated from `plsc/config/schema.py` and `plsc/config/plsc_compat.py` by "
             "`python -m plsc.config --markdown`; do not edit.",
             "Every key has the default shown. Override any key with `-o Section.key=value`; list items by index",
             "(`-o Loss.Train.0.MarginLoss.m2=0.4`); a mapping value replaces the whole subtree.", ""]

    def walk(node, path):
        rows = []
        for k, spec in node.items():
            p = f"{path}.{k}" if path else k
            rows += walk(spec, p) if isinstance(spec, dict) else [_row(p, spec)]
        return rows

    for section, node in S.SCHEMA.items():
        lines += [f"## {section}", "", "| key | default | meaning |", "|---|---|---|"]
        lines += walk(node, section) if isinstance(node, dict) else walk({section: node}, "")
        lines.append("")
    lines += ["## PLSC keys", "",
              "Accepted in any config and translated into the keys above before validation (PLSC's published face",
              "configs load with PLSC's meaning); a key without effect leaves one note in the train log when set.", "",
              "| key | default | meaning |", "|---|---|---|"]
    lines += [_row(p, spec) for p, spec in PLSC_KEYS.items()]
    lines.append("")
    return "\n".join(lines)
