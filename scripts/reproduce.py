"""`python scripts/reproduce.py ...` = `python -m scripts.reproduce ...`: the package scripts/reproduce/, which this
directory (the script's, first on sys.path) holds under the name `reproduce` (a package wins over this module).
The run's worker processes are spawned: they import this file too, and must not start another reproduction."""

import sys

from reproduce.cli import main

if __name__ == "__main__":
    sys.exit(main())
