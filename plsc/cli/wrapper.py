"""The one error wrapper of every plsc console script, and its argument parser.

    def pack_rec_main(argv=None):
        return run_command(pack_rec_parser(), argv)     # the parser's default `run` does the work

Exit codes (the same for every command):
  0    done (the entry function returns 0)
  2    a user error: plsc.errors.PlscError (and its subclasses), a bad command line, or a file the user
       named that cannot be opened; one line `prog: error: <message>` on stderr, no traceback
  1    plsc's own bug (any other exception): the traceback, then one line asking for a report
  130  interrupted (Ctrl-C)
A command may also return its own code (plsc-inspect-rec: 1 at the first bad record). Every code but 0
leaves through SystemExit, so `train_main()` in a launcher's script ends its process with the right code.
"""
import argparse
import os
import sys
import traceback

from plsc.errors import PlscError, UsageError

_USER_OS_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


class Parser(argparse.ArgumentParser):
    """argparse whose complaints (unknown option, missing or invalid argument) raise UsageError, so they
    reach the user through the wrapper as one line instead of argparse's usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)  # examples keep their lines
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def describe(doc):
    """(first line, rest) of a module docstring: a parser's description and its epilog."""
    first, _, rest = doc.strip().partition("\n")
    return first, rest.strip("\n") or None


def run_command(parser, argv=None):
    """Parse `argv` (default: sys.argv[1:]) and call `args.run(args)` under the one error wrapper."""
    prog = parser.prog
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = parser.parse_args(argv)
        code = args.run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except PlscError as e:
        user_error(prog, e)
    except _USER_OS_ERRORS as e:
        if not named_by_user(e.filename, argv):
            internal_error(prog)
        user_error(prog, f"{e.filename}: {e.strerror}")
    except Exception:  # noqa: BLE001  (plsc's own bug: shown with its traceback)
        internal_error(prog)
    if code:
        raise SystemExit(code)
    return 0


def user_error(prog, message):
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def internal_error(prog):
    traceback.print_exc()
    print(f"{prog}: internal error (a bug in plsc; please report it with the traceback above)", file=sys.stderr,
          flush=True)
    raise SystemExit(1)


def named_by_user(filename, argv):
    """`filename` is a path on the command line (an argument, the value of --opt=PATH or KEY=PATH), or lies in a
    folder named there."""
    if not isinstance(filename, (str, bytes, os.PathLike)) or not filename:
        return False
    target, cwd = os.path.abspath(os.fsdecode(filename)), os.path.join(os.getcwd(), "")
    for token in argv:
        for text in {token, token.partition("=")[2]}:
            path = os.path.abspath(text) if text else None
            if path is None:
                continue
            folder = os.path.join(path, "")
            if target == path or (target.startswith(folder) and not cwd.startswith(folder)):  # not "." nor "/"
                return True
    return False
