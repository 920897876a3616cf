"""docs/architecture.md names only modules, files and functions that exist (checked without importing)."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")


def _defined_names(py_file):
    tree = ast.parse(open(py_file, encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _module_file(parts):
    base = os.path.join(ROOT, *parts)
    if os.path.isfile(base + ".py"):
        return base + ".py"
    if os.path.isfile(os.path.join(base, "__init__.py")):
        return os.path.join(base, "__init__.py")
    return None


def resolve_dotted(name):
    """'plsc.metrics.align.align_face' -> None if it exists, else the reason."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        f = _module_file(parts[:cut])
        if f is None:
            continue
        rest = parts[cut:]
        if not rest:
            return None
        if rest[0] in _defined_names(f):
            return None
        return f"{'.'.join(parts[:cut])} defines no {rest[0]!r}"
    return "no such module"


def references(text):
    paths = set(re.findall(r"(?<![\w/.])((?:plsc|tools|tests)/[\w/]*\w(?:\.py)?/?)", text))
    dotted = set(re.findall(r"(?<![\w/.])(plsc(?:\.\w+)+)", text))
    return paths, dotted


def test_every_module_and_function_the_architecture_page_names_exists():
    paths, dotted = references(open(DOC, encoding="utf-8").read())
    assert len(paths) > 30 and len(dotted) > 5  # the page is a map: it names the code
    missing = [p for p in sorted(paths) if not os.path.exists(os.path.join(ROOT, p))]
    missing += [f"{d}: {why}" for d in sorted(dotted) if (why := resolve_dotted(d))]
    assert not missing, f"docs/architecture.md names what the code does not have: {missing}"


def test_the_checker_finds_a_name_that_does_not_exist():
    paths, dotted = references("see `plsc/engine/trainer_v9.py` and `plsc.metrics.align.no_such_fn`, "
                               "`plsc.nowhere`, `plsc/io/fc_shards.py`")
    assert "plsc/engine/trainer_v9.py" in paths and not os.path.exists(os.path.join(ROOT, "plsc/engine/trainer_v9.py"))
    assert resolve_dotted("plsc.metrics.align.no_such_fn") == "plsc.metrics.align defines no 'no_such_fn'"
    assert resolve_dotted("plsc.nowhere") == "plsc defines no 'nowhere'"
    assert resolve_dotted("plsc.metrics.align.align_face") is None
