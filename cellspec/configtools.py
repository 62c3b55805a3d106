"""Bounded, typed getters over one TOML table that collect precise errors.

Why: a plant engineer must learn from one run of `check-config` every mistake, each named by
file, table, key and bound (Klipper's habit). Getters record the keys they read so that keys
nobody reads are reported as likely typos.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

MISSING: Any = object()   # "no default": the key is required
# Getters never return MISSING: it would crash the first comparison or sum it meets. A required key
# that is absent is recorded as an error and the getter returns a harmless stand-in: NaN for a
# number (it fails every comparison, so later checks on it stay quiet), (NaN, NaN) for a pair, 0,
# False, "" or [] for the others, an empty table for a table.
ABSENT_NUMBER = math.nan


class InputFileError(ValueError):
    """A file the user wrote is wrong; `errors` lists every problem, one line each."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def read_toml(path: Path, error: type[InputFileError]) -> tuple[dict[str, Any], bytes]:
    """Parse a TOML file; any problem becomes `error` naming the file (never a traceback)."""
    name = str(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise error([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    try:
        return tomllib.loads(blob.decode("utf-8")), blob
    except UnicodeDecodeError:
        raise error([f"{name}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise error([f"{name}: not valid TOML: {exc}"]) from None


def fmt(value: Any) -> str:
    """Render a value the way it looks in TOML, so errors quote what the user wrote."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{...}"
    return repr(value)


class Section:
    """One TOML table being read: `[name]` in `file`."""

    def __init__(self, file: str, name: str, data: Any, errors: list[str], label: str | None = None,
                 missing: bool = False):
        self.file = file
        self.name = name
        # How errors name this table: "[name]" by default, nothing for the top level.
        self.label = label if label is not None else (f"[{name}] " if name else "")
        self.errors = errors
        if not isinstance(data, dict):
            self.error(f"must be a table, not {fmt(data)}")
            data = {}
        self.data: dict[str, Any] = data
        self.used: set[str] = set()
        # A required table that is absent: reported once, by its parent; its keys are not reported again.
        self.missing = missing

    # -- reporting -------------------------------------------------------------------------
    def error(self, message: str) -> None:
        self.errors.append(f"{self.file}: {self.label}{message}")

    def key_error(self, key: str, message: str) -> None:
        value = self.data.get(key, MISSING)
        if value is MISSING:
            self.error(f"{key} {message}")
        else:
            self.error(f"{key} = {fmt(value)} {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def _raw(self, key: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is MISSING and not self.missing:
                self.error(f"missing key '{key}'")
            return default
        return self.data[key]

    # -- getters ---------------------------------------------------------------------------
    def number(self, key: str, default: Any = MISSING, *, minval: float | None = None,
               maxval: float | None = None, above: float | None = None,
               below: float | None = None) -> float:
        value = self._raw(key, default)
        if key not in self.data:
            return ABSENT_NUMBER if value is MISSING else value
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.key_error(key, "must be a number")
            return default if default is not MISSING else math.nan
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            self.key_error(key, "must be a finite number")
        elif minval is not None and value < minval:
            self.key_error(key, f"must be at least {fmt(minval)}")
        elif maxval is not None and value > maxval:
            self.key_error(key, f"must be at most {fmt(maxval)}")
        elif above is not None and value <= above:
            self.key_error(key, f"must be above {fmt(above)}")
        elif below is not None and value >= below:
            self.key_error(key, f"must be below {fmt(below)}")
        return value

    def integer(self, key: str, default: Any = MISSING, *, minval: int | None = None,
                maxval: int | None = None) -> int:
        value = self._raw(key, default)
        if key not in self.data:
            return 0 if value is MISSING else value
        if isinstance(value, bool) or not isinstance(value, int):
            self.key_error(key, "must be a whole number")
            return default if default is not MISSING else 0
        if minval is not None and value < minval:
            self.key_error(key, f"must be at least {minval}")
        elif maxval is not None and value > maxval:
            self.key_error(key, f"must be at most {maxval}")
        return value

    def boolean(self, key: str, default: Any = MISSING) -> bool:
        value = self._raw(key, default)
        if key not in self.data:
            return False if value is MISSING else value
        if not isinstance(value, bool):
            self.key_error(key, "must be true or false")
            return bool(default) if default is not MISSING else False
        return value

    def string(self, key: str, default: Any = MISSING, *, choices: tuple[str, ...] | None = None,
               nonempty: bool = False) -> str:
        value = self._raw(key, default)
        if key not in self.data:
            return "" if value is MISSING else value
        if not isinstance(value, str):
            self.key_error(key, "must be a string")
            return default if default is not MISSING else ""
        if choices is not None and value not in choices:
            self.key_error(key, "must be one of " + ", ".join(fmt(c) for c in choices))
        elif nonempty and not value.strip():
            self.key_error(key, "must not be empty")
        return value

    def pair(self, key: str, default: Any = MISSING) -> tuple[float, float]:
        """A [low, high] pair of numbers with low < high."""
        value = self._raw(key, default)
        if key not in self.data:
            return (ABSENT_NUMBER, ABSENT_NUMBER) if value is MISSING else value
        ok = (isinstance(value, list) and len(value) == 2
              and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))
        if not ok:
            self.key_error(key, "must be a pair of numbers [low, high]")
            return (0.0, 1.0)
        low, high = float(value[0]), float(value[1])
        if not low < high:
            self.key_error(key, "must have its first number below its second")
        return (low, high)

    def string_list(self, key: str, default: Any = MISSING) -> list[str]:
        value = self._raw(key, default)
        if key not in self.data:
            return [] if value is MISSING else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.key_error(key, "must be a list of strings")
            return []
        return list(value)

    def table(self, key: str, default: Any = MISSING) -> Section:
        """A sub-table. A required one that is absent is one error, "missing section [name]"; its
        own keys are then not reported one by one, and its getters return their absent values."""
        name = f"{self.name}.{key}" if self.name else key
        self.used.add(key)
        missing = key not in self.data and (default is MISSING or self.missing)
        if missing and not self.missing:
            self.errors.append(f"{self.file}: missing section [{name}]")
        value = self.data.get(key, {} if default is MISSING else default)
        return Section(self.file, name, value, self.errors, missing=missing)

    def check_unknown(self) -> None:
        """Report keys nobody read: almost always a typo that would silently change nothing."""
        for key in self.data:
            if key not in self.used:
                known = ", ".join(sorted(self.used)) or "none"
                self.error(f"unknown key '{key}' (likely a typo; known keys here: {known})")

    def require_order(self, low_key: str, high_key: str, low: float, high: float,
                      relation: str = "above") -> None:
        """Warning below trip, low_low below low: the order that makes a limit meaningful."""
        if math.isnan(low) or math.isnan(high):
            return
        if not low < high:
            if relation == "above":
                self.error(f"{high_key} = {fmt(high)} must be above {low_key} = {fmt(low)}")
            else:
                self.error(f"{low_key} = {fmt(low)} must be below {high_key} = {fmt(high)}")
