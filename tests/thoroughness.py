"""How hard the property tests and the soak try, chosen by HYPOTHESIS_PROFILE (README, "Tests").

    HYPOTHESIS_PROFILE=ci        the default: the example counts each test states, a 4-day soak
    HYPOTHESIS_PROFILE=thorough  ten times those counts (1000 for a test that states none) and the
                                 soak's whole week: for a release, a nightly run, or a changed core

tests/conftest.py loads the profile before any test is collected. A test that states its own
count wraps it in examples(n) to follow the profile.
"""

import os

from hypothesis import settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
THOROUGH = PROFILE == "thorough"
FACTOR = 10 if THOROUGH else 1

settings.register_profile("ci", settings.get_profile("default"))
settings.register_profile("thorough", max_examples=1000)
settings.load_profile(PROFILE)   # an unknown name is an error, not a silent default


def examples(n: int) -> int:
    """A test's stated example count under the chosen profile."""
    return n * FACTOR
