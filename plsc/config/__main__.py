"""python -m plsc.config --markdown: print docs/config.md."""
import sys

from plsc.config.docs import markdown

if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown())
    else:
        print("usage: python -m plsc.config --markdown", file=sys.stderr)
        sys.exit(2)
