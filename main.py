"""Run sfeditor from a source checkout: ``python main.py [subcommand ...]`` (same as the ``sfeditor`` command)."""
import sys

from sfeditor.cli import main

if __name__ == "__main__":
    sys.exit(main())
