"""`python scripts/reproduce.py ...` = `python -m scripts.reproduce ...`: the package scripts/reproduce/, which this
directory (the script's, first on sys.path) holds under the name `reproduce` (a package wins over this module)."""

import sys

from reproduce.cli import main

sys.exit(main())
