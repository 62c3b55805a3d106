"""Run the core tests under the MicroPython unix port.

Usage: micropython tests/micropython/run_core_tests.py REPO_ROOT PARAMS_JSON
PARAMS_JSON holds the default plant's core parameters (written by CPython, since MicroPython
has no TOML reader). Prints 'N passed, N failed' and exits 1 on any failure.
"""

import sys

root = sys.argv[1]
sys.path.insert(0, root)
sys.path.insert(0, root + "/tests")

import corekit  # noqa: E402

corekit.PARAMS_JSON = sys.argv[2]

import test_core  # noqa: E402

passed = 0
failed = 0
tests = {n: getattr(test_core, n) for n in dir(test_core) if n.startswith("test_")}
for n in test_core.GENERATED:
    tests[n] = test_core.GENERATED[n]
for name in sorted(tests):
    fn = tests[name]
    try:
        fn()
        passed += 1
    except Exception as exc:  # report every failure, then fail the run
        failed += 1
        print("FAIL", name, repr(exc))
print("micropython core tests: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
