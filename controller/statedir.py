"""Where `run`, `journal`, `calibration`, `probe` and `panel` look for the state dir by default.

Why one rule for all: the state dir holds the controller's lock, latch, journal and calibration
records. A command that looks elsewhere than the running controller is wrong in a dangerous way:
`probe --outputs` would not see the running controller's lock, and a calibration recorded there
would never reach it. The rule, for every command:

1. `--state-dir DIR` when given;
2. else $CRUSHCELL_STATE_DIR when set (a developer's or a training board's choice);
3. else /var/lib/crushcell when that directory exists: a board installed by deploy/install.sh
   (the service runs with --state-dir /var/lib/crushcell), so a plant engineer at the board's
   shell reads and checks what the service uses;
4. else ./var: a checkout on a laptop (`make run` passes --state-dir var/demo).
"""

from __future__ import annotations

import os

BOARD_STATE_DIR = "/var/lib/crushcell"   # deploy/install.sh creates it; the unit passes it
DEV_STATE_DIR = "var"                    # relative to the working directory: a checkout's ./var
ENV = "CRUSHCELL_STATE_DIR"


def default_state_dir(environ: dict[str, str] | None = None, board: str = BOARD_STATE_DIR) -> str:
    env = os.environ if environ is None else environ
    chosen = env.get(ENV)
    if chosen:
        return chosen
    return board if os.path.isdir(board) else DEV_STATE_DIR


def help_text(what: str) -> str:
    """The --state-dir help: what the dir is for, the default on this machine, and the rule."""
    return (f"{what} (default: {default_state_dir()}; the rule: ${ENV}, else {BOARD_STATE_DIR} if it "
            f"exists, as on a board installed by deploy/install.sh, else ./{DEV_STATE_DIR})")
