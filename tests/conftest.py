"""Puts the repository's ``examples/`` folder on ``sys.path`` so tests can ``import paper``."""

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
  sys.path.insert(0, str(EXAMPLES))
