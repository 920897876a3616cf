"""python -m plsc.cli <command> ... (the same as plsc <command> ...)."""
import sys

from plsc.cli.main import main

sys.exit(main())
