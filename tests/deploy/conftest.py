"""Shared helpers for the deployment tests.

The repository root goes first on sys.path so that `controller.sdnotify` is imported from this
checkout, not from an installed copy.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
