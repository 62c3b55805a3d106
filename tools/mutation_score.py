"""Print the mutation score of the safety core from mutmut 3's results (`make mutation`).

Reads mutants/controller/<module>.meta (mutmut's per-file results: exit code per mutant) and
prints killed/total per module. A timeout counts as killed (the mutant hung the tests: detected);
"no tests" and "not checked" count against the score. Exit 1 when a module is below MIN_SCORE.
"""

import json
import sys
from collections import Counter
from pathlib import Path

MODULES = ("controller/core.py", "controller/health.py", "controller/voting.py", "controller/feedback.py")
MIN_SCORE = 0.90
KILLED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout",
          255: "timeout"}
SURVIVED = {0: "survived"}


def score(meta_path: Path) -> tuple[int, int, Counter, list[str]]:
    data = json.loads(meta_path.read_text())
    codes = data["exit_code_by_key"]
    kinds: Counter = Counter()
    survivors = []
    for key, code in codes.items():
        kind = KILLED.get(code) or SURVIVED.get(code) or ("not checked" if code is None else f"exit {code}")
        kinds[kind] += 1
        if kind == "survived":
            survivors.append(key)
    killed = kinds["killed"] + kinds["timeout"]
    return killed, len(codes), kinds, sorted(survivors)


def main(root: str = ".") -> int:
    worst = 1.0
    for module in MODULES:
        meta = Path(root) / "mutants" / (module + ".meta")
        if not meta.exists():
            print(f"{module}: no mutmut results (run `make mutation`)")
            return 1
        killed, total, kinds, survivors = score(meta)
        ratio = killed / total if total else 0.0
        worst = min(worst, ratio)
        print(f"{module}: {killed}/{total} killed ({ratio:.1%}); " + ", ".join(f"{k} {v}" for k, v in
                                                                             sorted(kinds.items())))
        for name in survivors:
            print(f"  survived: {name}")
    return 0 if worst >= MIN_SCORE else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
