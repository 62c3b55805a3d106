"""Run the safety core's test modules under the MicroPython unix port.

Usage: micropython tests/micropython/run_core_tests.py REPO_ROOT PARAMS_JSON [MODULE ...]
PARAMS_JSON holds the default plant's core parameters (written by CPython, since MicroPython
has no TOML reader). MODULE names test modules in tests/ (default: MODULES below); each must use
plain asserts and no pytest. Every `test_*` function of a module runs, plus the functions its
GENERATED dict holds (tests made in loops). Prints one line per module,
'module NAME: N passed, N failed', then 'micropython core tests: N passed, N failed', and exits 1
on any failure. tests/test_micropython.py checks each module's count against CPython's.
"""

import sys

MODULES = ("test_core", "test_health", "test_hazards", "test_clocks")


def collect(mod):
    """The tests of a module, by name: the same rule on CPython and MicroPython."""
    tests = {}
    for n in dir(mod):
        if n.startswith("test_"):
            fn = getattr(mod, n)
            if callable(fn):
                tests[n] = fn
    generated = getattr(mod, "GENERATED", None)
    if generated:
        for n in generated:
            tests[n] = generated[n]
    return tests


def run_module(name):
    passed = 0
    failed = 0
    try:
        mod = __import__(name)
    except Exception as exc:  # a module that does not even import under MicroPython
        print("FAIL import", name, repr(exc))
        if hasattr(sys, "print_exception"):
            sys.print_exception(exc)
        return 0, 1
    tests = collect(mod)
    for test in sorted(tests):
        try:
            tests[test]()
            passed += 1
        except Exception as exc:  # report every failure, then fail the run
            failed += 1
            print("FAIL", name + "." + test, repr(exc))
            if hasattr(sys, "print_exception"):
                sys.print_exception(exc)
    print("module %s: %d passed, %d failed" % (name, passed, failed))
    return passed, failed


def main(argv):
    root = argv[1]
    sys.path.insert(0, root)
    sys.path.insert(0, root + "/tests")
    import corekit

    corekit.PARAMS_JSON = argv[2]
    passed = 0
    failed = 0
    for name in argv[3:] or MODULES:
        p, f = run_module(name)
        passed += p
        failed += f
    print("micropython core tests: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
