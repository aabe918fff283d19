"""`python scripts/reproduce.py ...` = `python -m scripts.reproduce ...` (the package scripts/reproduce/)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.reproduce.cli import main  # noqa: E402  (the package beside this file, not this file)

sys.exit(main())
