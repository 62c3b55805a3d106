"""What a person at the terminal sees of a running controller: the live status line.

Kept apart from the runtime so that the wiring (threads, files, signals) and the presentation can
change on their own.
"""

from __future__ import annotations

import math
from typing import Any

KEY_SENSORS = (("o2", "O2", "%.2f%%"), ("h2_cell", "H2", "%.2f"), ("lel_cell", "LEL", "%.1f"),
               ("co_cell", "CO", "%.0f"), ("temp_material", "Tmat", "%.0fC"), ("dp_cell", "dp", "%.0fPa"))


def status_line(snap: Any) -> str:
    from controller.names import SENSORS

    parts = [f"{snap.state:<8}", f"t={snap.t:8.1f}s"]
    for key, label, form in KEY_SENSORS:
        if key == "o2":
            v = snap.voted_o2
            bad = sum(1 for i, n in enumerate(SENSORS) if n.startswith("o2_") and snap.quality[i] != "good")
            text = "----" if v != v else form % v
            parts.append(f"{label} {text}({3 - bad}/3)")
        else:
            i = SENSORS.index(key)
            v = snap.values[i]
            ok = snap.quality[i] == "good"
            parts.append(f"{label} {form % v if ok and not math.isnan(v) else 'FAULT'}")
    parts.append("causes: " + (",".join(snap.causes) or "-"))
    alarms = [a[0] for a in snap.alarms]
    parts.append("alarms: " + (",".join(alarms) or "-"))
    return " | ".join(parts)
