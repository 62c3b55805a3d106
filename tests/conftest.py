import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import thoroughness  # noqa: E402, F401  (loads the hypothesis profile: HYPOTHESIS_PROFILE=ci|thorough)
