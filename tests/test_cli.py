"""The console scripts as a user runs them: every script of setup.py lives in plsc.cli and is a `plsc` command,
answers --help (exit 0, every option with a help text) without loading Paddle, and a user error in each family
is one line `prog: error: ...` with exit code 2 and no traceback; plsc's own bug is a traceback and exit 1."""
import ast
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

import plsc
from plsc.cli.main import COMMANDS
from plsc.cli.wrapper import Parser, run_command
from plsc.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # where pip installed the console scripts of this environment


def console_scripts():
    """{name: "module:function"} of setup.py's console_scripts, read from the file (a new one cannot be missed)."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return dict(item.value.replace(" ", "").split("=", 1) for item in value.elts)
    raise AssertionError("setup.py has no console_scripts")


SCRIPTS = console_scripts()


def entry(target):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def script(name):
    path = os.path.join(BIN, name)
    assert os.path.isfile(path), f"{path} missing: reinstall (pip install -e .) after changing setup.py"
    return path


def run_all(commands, cwd):
    """Run the commands at once (each is mostly interpreter start-up) -> [(returncode, stdout, stderr)]."""
    env = dict(os.environ, COLUMNS="100")
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
             for c in commands]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append((p.returncode, out, err))
    return results


def undocumented(help_text):
    """Entries of the help's sections (`header:` then lines indented by two spaces) that have no help text: the
    entry's line holds only its name / flags and the next line is not its indented help."""
    lines = help_text.splitlines()
    missing, in_section = [], False
    for i, line in enumerate(lines):
        if re.match(r"^\S.*:$", line):
            in_section = True
        elif not line.strip():
            in_section = False
        elif in_section and re.match(r"^  \S", line):
            has_text = re.search(r"\S {2,}\S", line.strip()) is not None
            continued = i + 1 < len(lines) and re.match(r"^ {4,}\S", lines[i + 1]) is not None
            if not (has_text or continued):
                missing.append(line.strip())
    return missing


def test_every_console_script_lives_in_plsc_cli_and_is_a_plsc_command():
    assert "plsc" in SCRIPTS and len(SCRIPTS) == len(COMMANDS) + 1
    for name, target in SCRIPTS.items():
        assert target.startswith("plsc.cli."), (name, target)
        fn = entry(target)
        if name != "plsc":
            assert name.startswith("plsc-") and COMMANDS[name[len("plsc-"):]][0] is fn, name
    assert {f"plsc-{c}" for c in COMMANDS} == set(SCRIPTS) - {"plsc"}


def test_help_of_every_console_script_and_subcommand_documents_every_option(tmp_path):
    names = sorted(SCRIPTS)
    results = dict(zip(names, run_all([[script(n), "--help"] for n in names], tmp_path)))
    subcommands = []
    for name, (code, out, err) in results.items():
        assert code == 0 and out.startswith(f"usage: {name}") and not err.strip(), (name, code, err[-2000:])
        assert not undocumented(out), (name, undocumented(out))
        choices = re.search(r"\{([a-z,-]+)\} \.\.\.", out.split("\n\n")[0])  # {sub,commands} ...
        subcommands += [(name, sub) for sub in choices.group(1).split(",")] if choices else []
    assert {n for n, _ in subcommands} == {"plsc-bin-convert", "plsc-fc-shards", "plsc-search"}
    for (name, sub), (code, out, err) in zip(subcommands,
                                             run_all([[script(n), s, "--help"] for n, s in subcommands], tmp_path)):
        assert code == 0 and out.startswith(f"usage: {name} {sub}") and not undocumented(out), (name, sub, out, err)
    listing = results["plsc"][1]
    for command, (_, line) in COMMANDS.items():  # `plsc --help` lists every command with its line
        assert re.search(rf"^  {re.escape(command)} +{re.escape(line)}$", listing, re.M), command


def test_help_does_not_load_paddle():
    code = ("import sys\nfrom plsc.cli.main import COMMANDS\n"
            "for fn, _ in COMMANDS.values():\n"
            "    try:\n        fn(['--help'])\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print('paddle loaded:', 'paddle' in sys.modules, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "paddle loaded: False" in r.stderr, r.stderr[-2000:]


def test_plsc_version_and_dispatch(tmp_path):
    (v_code, v_out, v_err), (d_code, d_out, d_err), (u_code, u_out, u_err) = run_all(
        [[script("plsc"), "--version"], [script("plsc"), "inspect-rec", "--help"], [script("plsc"), "inspect"]],
        tmp_path)
    assert v_code == 0 and v_out.strip() == f"plsc {plsc.__version__}", (v_out, v_err)
    assert importlib.metadata.version("plsc") == plsc.__version__  # one version: setup.py reads plsc/__init__.py
    assert d_code == 0 and d_out.startswith("usage: plsc-inspect-rec"), d_err  # `plsc <command>` is plsc-<command>
    assert u_code == 2 and u_err.startswith("plsc: error: argument COMMAND: invalid choice: 'inspect'"), u_err
    assert len(u_err.splitlines()) == 1


def test_a_user_error_of_each_family_is_one_line_and_exit_2(tmp_path):
    """Through the real console scripts: one line `prog: error: <what>`, no traceback, exit code 2."""
    (tmp_path / "a_file").write_text("x")
    cases = [  # (command line, what the message must name)
        (["plsc-train", "-c", "nowhere.yaml"], "config file not found"),
        (["plsc-eval", "-o", "Global.epochs=1"], "the following arguments are required: -c/--config"),
        (["plsc-ijb", "--model", "m.onnx", "--root", "ijb", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["plsc-inspect-rec", "no_rec_dir"], "no_rec_dir/train.rec"),
        (["plsc-fc-shards", "split", "nowhere", "--world-size", "2", "--out", "a_file"], "a_file exists"),
        (["plsc-import", "nowhere.pth", "--out", "imported"], "nowhere.pth"),
        (["plsc-embed", "nowhere.onnx", "x.jpg", "--out", "e.npz"], "model not found"),
        (["plsc-search", "query", "nowhere.faiss", "x.jpg"], "index not found"),
        (["plsc-demo", "--out", "a_file"], "a_file exists and is not a folder"),
    ]
    families = {SCRIPTS[c[0][0]].split(":")[0] for c in cases}
    assert families == {SCRIPTS[n].split(":")[0] for n in SCRIPTS if n != "plsc"} - {"plsc.cli.main"}
    results = run_all([[script(argv[0]), *argv[1:]] for argv, _ in cases], tmp_path)
    for (argv, needle), (code, out, err) in zip(cases, results):
        ours = [line for line in err.splitlines() if line.startswith(argv[0])]
        assert code == 2 and "Traceback" not in err, (argv, code, err[-3000:])
        assert len(ours) == 1 and ours[0].startswith(f"{argv[0]}: error: ") and needle in ours[0], (argv, err)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # nothing written


def _parser(run):
    p = Parser(prog="plsc-test")
    p.add_argument("path", help="a file")
    p.set_defaults(run=run)
    return p


def _exit(parser, argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_command(parser, argv)
    return e.value.code, capsys.readouterr().err


def test_the_wrapper_sorts_user_errors_from_bugs(tmp_path, capsys):
    def bug(args):
        raise RuntimeError("boom")

    code, err = _exit(_parser(bug), ["x"], capsys)  # plsc's own bug: its traceback, exit 1
    assert code == 1 and "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert err.rstrip().endswith("plsc-test: internal error (a bug in plsc; please report it with the traceback above)")

    def bad_data(args):
        raise DataError(f"{args.path}: record 3 is truncated")

    assert _exit(_parser(bad_data), ["f.rec"], capsys) == (2, "plsc-test: error: f.rec: record 3 is truncated\n")

    def read(args):
        return open(args.path).read() and 0

    missing = tmp_path / "gone" / "x.txt"  # a file the user named: one line, exit 2
    assert _exit(_parser(read), [missing], capsys) == (2, f"plsc-test: error: {missing}: No such file or directory\n")
    code, err = _exit(_parser(lambda args: open(tmp_path / "internal.json").read()), ["x"], capsys)
    assert code == 1 and "FileNotFoundError" in err and "Traceback" in err  # a file plsc chose: a bug

    code, err = _exit(_parser(read), ["--nope"], capsys)  # argparse's complaint: one line, exit 2
    assert code == 2 and err == "plsc-test: error: the following arguments are required: path (see plsc-test --help)\n"

    def interrupted(args):
        raise KeyboardInterrupt

    assert _exit(_parser(interrupted), ["x"], capsys) == (130, "plsc-test: interrupted\n")
    assert run_command(_parser(lambda args: None), ["x"]) == 0  # done: returns 0
    assert _exit(_parser(lambda args: 1), ["x"], capsys) == (1, "")  # a command's own code (plsc-inspect-rec's 1)
