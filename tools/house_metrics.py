"""How livable plsc's package is, in numbers (issue "A house a new engineer can live in").

    python tools/house_metrics.py                 # the working tree
    python tools/house_metrics.py --rev 289349c   # a commit (read with git show, nothing checked out)

Prints: imports that run up the layers (base <- config <- models/data/amp <- nn/optim <- interop/metrics <-
export/inference <- engine <- deploy/tools/cli/demo: an import of a higher layer from a lower one), imports of plsc
modules inside functions, modules over 400 lines, functions over 60 lines, and the lines of plsc/engine.
"""
import argparse
import ast
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = [  # DESIGN.md's layout, bottom up; an import may point down or sideways, never up
    {"errors", "env", "distributed", "progress", "registry", "io", "cpu_fast", "version"},
    {"config", "config_schema"},
    {"models", "data", "amp"},
    {"nn", "optim"},
    {"interop", "metrics"},
    {"export", "inference"},
    {"engine"},
    {"deploy", "tools", "cli", "demo"},
]


def layer_of(module):
    """'plsc.engine.resume' -> layer index of 'engine' (None outside plsc / unknown)."""
    parts = module.split(".")
    if parts[0] != "plsc" or len(parts) < 2:
        return None
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    return None


def files(rev):
    if rev is None:
        for d, _, names in os.walk(os.path.join(ROOT, "plsc")):
            for n in names:
                if n.endswith(".py"):
                    path = os.path.join(d, n)
                    with open(path, encoding="utf-8") as f:
                        yield os.path.relpath(path, ROOT), f.read()
        return
    listing = subprocess.run(["git", "-C", ROOT, "ls-tree", "-r", "--name-only", rev, "plsc"], capture_output=True,
                             text=True, check=True).stdout.split()
    for path in listing:
        if path.endswith(".py"):
            yield path, subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], capture_output=True, text=True,
                                       check=True).stdout


def measure(rev):
    upward, inner, long_modules, long_functions, engine_lines = [], [], [], [], 0
    for path, text in files(rev):
        module = path[:-3].replace(os.sep, ".").removesuffix(".__init__")
        own = layer_of(module)
        lines = text.count("\n")
        if lines > 400:
            long_modules.append((path, lines))
        if path.startswith(os.path.join("plsc", "engine")):
            engine_lines += lines
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long_functions.append((f"{path}:{node.name}", n))
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and any(m.startswith("plsc") for m in _targets(sub)):
                        inner.append(f"{path}:{sub.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node):
                    their = layer_of(target)
                    if own is not None and their is not None and their > own:
                        upward.append(f"{path}:{node.lineno} -> {target}")
    return upward, sorted(set(inner)), long_modules, long_functions, engine_lines


def _targets(node):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.module is None:
        return []
    return [node.module] + [f"{node.module}.{a.name}" for a in node.names][:1] if node.module == "plsc" else [node.module]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default=None, help="a git revision instead of the working tree")
    p.add_argument("--list", action="store_true", help="list every finding, not only the counts")
    a = p.parse_args()
    upward, inner, mods, funcs, engine = measure(a.rev)
    print(f"| measure ({a.rev or 'working tree'}) | value |\n|---|---|")
    print(f"| imports up the layers | {len(upward)} |")
    print(f"| imports of plsc modules inside functions | {len(inner)} |")
    print(f"| modules over 400 lines | {len(mods)} |")
    print(f"| functions over 60 lines | {len(funcs)} |")
    print(f"| lines of plsc/engine | {engine} |")
    if a.list:
        for title, items in (("up the layers", upward), ("inside functions", inner), ("long modules", mods),
                             ("long functions", funcs)):
            print(f"\n{title}:")
            for item in items:
                print(f"  {item}")


if __name__ == "__main__":
    main()
