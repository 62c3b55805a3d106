"""The HMI's pages, rendered on the server as HTML (and SVG): no template engine, no CDN, no build.

The live part of each page (`<div id="live">`) is the same HTML the server pushes over
server-sent events, so the first paint and every update come from one function.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any

from controller.console import next_action

STATE_COLOURS = {"BOOT": "#6b7280", "IDLE": "#64748b", "PURGING": "#0e7490", "READY": "#15803d",
                 "RUNNING": "#16a34a", "STOPPING": "#b45309", "TRIPPED": "#dc2626"}
# The outputs of the sketch, left to right, with what "on" means for each.
SKETCH = (("n2_purge", "N2 purge", "open", "closed"), ("n2_boost", "N2 boost", "open", "closed"),
          ("feed", "feed", "on", "off"), ("crusher", "crusher", "on", "off"),
          ("exhaust", "exhaust to RTO", "open", "closed"), ("vent", "vent to scrubber", "open", "closed"))
TRENDS = (("voted_o2", "O2 voted", "o2"), ("o2_a", "O2 a", "o2"), ("o2_b", "O2 b", "o2"),
          ("o2_c", "O2 c", "o2"), ("temp_gas", "T gas", "temp_gas"),
          ("temp_material", "T material", "temp_material"), ("dp_cell", "dp cell", "dp_cell"),
          ("lel_cell", "LEL cell", "lel_cell"), ("lel_rto", "LEL RTO inlet", "lel_rto"))

e = html.escape

CSS = """
*{box-sizing:border-box}body{margin:0;font:16px/1.35 system-ui,sans-serif;background:#0f172a;color:#e2e8f0}
header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:#1e293b;flex-wrap:wrap}
header a{color:#93c5fd}h1{font-size:1.2em;margin:0}main{padding:1em}
#conn{margin-left:auto;font-weight:bold}#conn.down{color:#fff;background:#dc2626;padding:.2em .6em}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1em}
.tile{display:block;color:inherit;text-decoration:none;border-radius:8px;padding:.8em;background:#1e293b;
border:4px solid transparent}.tile h2{margin:0 0 .3em;font-size:1.3em}
.state{display:inline-block;padding:.15em .5em;border-radius:4px;color:#fff;font-weight:bold}
.big{font-size:2.6em;padding:.1em .6em}
.offline{background:repeating-linear-gradient(45deg,#1e293b,#1e293b 12px,#374151 12px,#374151 24px);
border-color:#9ca3af}.offline .state{background:#4b5563!important;text-decoration:line-through}
.stale{border-color:#f59e0b}.flag{font-weight:bold;padding:.1em .4em;border-radius:4px;margin-left:.3em}
.flag.off{background:#9ca3af;color:#111}.flag.stale{background:#f59e0b;color:#111}.flag.on{background:#166534}
table{border-collapse:collapse;width:100%}td,th{padding:.25em .5em;border-bottom:1px solid #334155;
text-align:left;vertical-align:middle;overflow-wrap:anywhere}.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{position:relative;height:14px;background:#334155;border-radius:3px;min-width:120px}
.bar i{position:absolute;left:0;top:0;bottom:0;background:#38bdf8;border-radius:3px}
.bar b{position:absolute;top:-3px;bottom:-3px;width:2px}
.bar b.w{background:#f59e0b}.bar b.t{background:#ef4444}
.fault{color:#fca5a5;font-weight:bold}.warn{color:#fcd34d}.trip{color:#fca5a5;font-weight:bold}
section{background:#1e293b;border-radius:8px;padding:.8em;margin-bottom:1em}
section h2{margin:0 0 .5em;font-size:1.1em}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1em}
.cause{font-weight:bold;color:#fca5a5}.muted{color:#94a3b8}
button{font-size:1.1em;padding:.6em 1.1em;margin:.2em;border-radius:6px;border:0;
background:#2563eb;color:#fff}
button.danger{background:#b91c1c}input{font-size:1.1em;padding:.4em}
svg text{fill:#e2e8f0;font-size:12px}.trend{width:100%;height:auto;background:#0f172a}
@media (max-width:600px){.grid{grid-template-columns:1fr}.big{font-size:1.8em}}
"""

JS = """
(function(){
  var live=document.getElementById('live'), conn=document.getElementById('conn');
  if(live.dataset.sse){
    var es=new EventSource(live.dataset.sse);
    es.addEventListener('update',function(ev){live.innerHTML=ev.data;});
    es.onopen=function(){conn.textContent='live';conn.className='';};
    es.onerror=function(){conn.textContent='HMI CONNECTION LOST: values are not live';conn.className='down';};
  }
  var form=document.getElementById('cmds');
  if(!form) return;
  form.addEventListener('click',function(ev){
    var b=ev.target.closest('button'); if(!b) return; ev.preventDefault();
    var by=document.getElementById('by').value.trim(), out=document.getElementById('cmdout');
    if(!by){out.textContent='enter your name first: it is recorded with the command';return;}
    if(b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
    fetch(form.dataset.url,{method:'POST',headers:{'Content-Type':'application/json'},
      body:JSON.stringify({action:b.dataset.action,by:by})})
      .then(function(r){return r.json();})
      .then(function(j){out.textContent=j.message;})
      .catch(function(){out.textContent='not sent: the HMI did not answer';});
  });
})();
"""


def page(title: str, live: str, sse: str, extra: str = "", nav: str = "") -> str:
    """sse: the event stream of the live part; "" for a page that is not live (the journal search)."""
    conn = "connecting" if sse else "not live: a search of the journal"
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{e(title)}</h1><a href=\"/\">plant</a>"
            f"<a href=\"/cause-effect\">cause and effect</a><a href=\"/journal\">journal</a>"
            f"{nav}<span id=\"conn\">{conn}</span></header><main>{extra}"
            f"<div id=\"live\" data-sse=\"{e(sse)}\">{live}</div></main><script>{JS}</script></body></html>")


def _age(age: float | None) -> str:
    if age is None:
        return "no telemetry yet"
    if age < 120:
        return f"{age:.0f} s ago"
    if age < 7200:
        return f"{age / 60:.0f} min ago"
    return f"{age / 3600:.1f} h ago"


def _state_badge(state: str | None, big: bool = False) -> str:
    colour = STATE_COLOURS.get(state or "", "#6b7280")
    return (f"<span class=\"state{' big' if big else ''}\" data-state=\"{e(state or '')}\" "
            f"style=\"background:{colour}\">{e(state or '?')}</span>")


def _flags(c: dict[str, Any]) -> str:
    out = []
    if c["offline"]:
        out.append("<span class=\"flag off\">OFFLINE</span>")
    elif c["availability"] == "online":
        out.append("<span class=\"flag on\">online</span>")
    if c["stale"] and not c["offline"]:
        out.append("<span class=\"flag stale\">STALE</span>")
    return "".join(out)


def _link_banner(view: dict[str, Any]) -> str:
    if view["connected"]:
        return ""
    return f"<p class=\"flag off\">NOT CONNECTED TO THE BROKER: {e(view['link'])}; nothing here is live</p>"


def plant(view: dict[str, Any]) -> str:
    tiles = []
    for name, c in view["cells"].items():
        st = c["status"] or {}
        causes = [str(x) for x in st.get("causes") or []] if c["state"] == st.get("state") else []
        alarms = [a for a in st.get("alarms") or [] if isinstance(a, dict)]
        unacked = sum(1 for a in alarms if not a.get("acked"))
        cls = "tile" + (" offline" if c["offline"] else " stale" if c["stale"] else "")
        first = (f"<div>first-out: <span class=\"cause first-out\">{e(causes[0])}</span>"
                 + (f" <span class=\"muted\">+{len(causes) - 1} more</span>" if causes[1:] else "") + "</div>"
                 if causes else "<div class=\"muted\">no trip cause</div>")
        tiles.append(
            f"<a class=\"{cls}\" id=\"tile-{e(name)}\" data-cell=\"{e(name)}\" href=\"/cell/{e(name)}\">"
            f"<h2>{e(name)}{_flags(c)}</h2>{_state_badge(c['state'])}{first}"
            f"<div>alarms: <b class=\"alarms\">{len(alarms)}</b>"
            + (f" <span class=\"warn\">({unacked} not acknowledged)</span>" if unacked else "") + "</div>"
            f"<div class=\"age\">telemetry: {e(_age(c['age']))}</div></a>")
    body = "".join(tiles) or "<p class=\"muted\">no cell seen on the broker yet</p>"
    return _link_banner(view) + f"<div class=\"tiles\">{body}</div>"


def limits(config: Any, sensor: str) -> dict[str, float]:
    """Warning and trip of a sensor from the config ('low' ones for limits below which is bad)."""
    th = config.thresholds
    if sensor.startswith("o2_"):
        return {"warning": th["o2"]["warning"], "trip": th["o2"]["trip"]}
    if sensor == "dp_cell":
        return {"warning_high": th["dp_cell"]["warning_high"], "trip": th["dp_cell"]["trip"],
                "warning_low": th["dp_cell"]["warning_low"]}
    if sensor == "n2_supply":
        return {"warning_low": th["n2_supply"]["low"], "trip_low": th["n2_supply"]["low_low"]}
    t = th.get(sensor)
    return {"warning": t["warning"], "trip": t["trip"]} if t else {}


def _bar(config: Any, sensor: str, value: float | None) -> str:
    sc = config.sensors.get(sensor)
    if sc is None:
        return ""
    lo, hi = sc.low, sc.high

    def pos(v: float) -> float:
        return max(0.0, min(100.0, (v - lo) / (hi - lo) * 100.0))

    marks = "".join(f"<b class=\"{'t' if k.startswith('trip') else 'w'}\" style=\"left:{pos(v):.1f}%\" "
                    f"title=\"{k} {v:g}\"></b>" for k, v in limits(config, sensor).items())
    fill = f"<i style=\"width:{pos(value):.1f}%\"></i>" if value is not None else ""
    return f"<div class=\"bar\">{fill}{marks}</div>"


def _level(lim: dict[str, float], v: float) -> str:
    if ("trip" in lim and v >= lim["trip"]) or ("trip_low" in lim and v <= lim["trip_low"]):
        return "trip"
    high = lim.get("warning", lim.get("warning_high"))
    if (high is not None and v >= high) or ("warning_low" in lim and v <= lim["warning_low"]):
        return "warn"
    return ""


def _sensors(config: Any, tel: dict[str, Any] | None) -> str:
    rows = []
    sensors = (tel or {}).get("sensors") or {}
    for name in config.sensors:
        s = sensors.get(name) or {}
        v, q = s.get("value"), s.get("quality")
        unit = s.get("unit") or config.sensors[name].unit
        lim = limits(config, name)
        good = q == "good" and isinstance(v, int | float)
        cls = ("fault" if q and q != "good" else _level(lim, v) if good else "")
        lim_text = ", ".join(f"{k.replace('_', ' ')} {x:g}" for k, x in lim.items())
        rows.append(f"<tr class=\"sensor\" data-sensor=\"{e(name)}\"><td>{e(name)}</td>"
                    f"<td class=\"num {cls}\">{e('--' if v is None else f'{v:g}')}</td><td>{e(unit)}</td>"
                    f"<td class=\"{'fault' if q and q != 'good' else ''}\">{e(q or 'no data')}</td>"
                    f"<td>{_bar(config, name, v if good else None)}</td>"
                    f"<td class=\"muted\">{e(lim_text)}</td></tr>")
    voted = ((tel or {}).get("voted") or {}).get("o2")
    rows.append(f"<tr class=\"sensor\" data-sensor=\"voted_o2\"><td>O2 voted (2oo3)</td>"
                f"<td class=\"num\">{e('--' if voted is None else f'{voted:g}')}</td><td>%</td><td></td>"
                f"<td>{_bar(config, 'o2_a', voted)}</td><td></td></tr>")
    return ("<table><tr><th>sensor</th><th>value</th><th>unit</th><th>quality</th><th>against warning "
            "(amber) and trip (red)</th><th>limits</th></tr>" + "".join(rows) + "</table>")


def _sketch(outputs: dict[str, Any]) -> str:
    """The cell as a sketch: the chamber, the N2 valves into it, the feed and crusher, and the two
    ways out (exhaust to the RTO, vent to the scrubber), each coloured by its output's state."""
    parts = ["<svg viewBox=\"0 0 620 240\" class=\"trend\" role=\"img\" aria-label=\"cell sketch\">",
             "<rect x=\"200\" y=\"40\" width=\"220\" height=\"140\" rx=\"10\" fill=\"#1e293b\" "
             "stroke=\"#94a3b8\" stroke-width=\"3\"/><text x=\"310\" y=\"60\" text-anchor=\"middle\">"
             "sealed cell (N2)</text>"]
    places = {"n2_purge": (20, 60, 200, 80), "n2_boost": (20, 130, 200, 150), "feed": (230, 190, 270, 180),
              "crusher": (330, 110, 330, 110), "exhaust": (470, 60, 420, 80), "vent": (470, 130, 420, 150)}
    for key, label, on_word, off_word in SKETCH:
        state = outputs.get(key)
        word = "?" if state is None else on_word if state else off_word
        colour = "#6b7280" if state is None else "#22c55e" if state else "#475569"
        x, y, lx, ly = places[key]
        if key == "crusher":
            parts.append(f"<g data-output=\"{key}\" data-on=\"{str(state).lower()}\"><circle cx=\"310\" "
                         f"cy=\"120\" r=\"32\" fill=\"{colour}\"/>"
                         f"<text x=\"310\" y=\"118\" text-anchor=\"middle\">{e(label)}</text>"
                         f"<text x=\"310\" y=\"134\" text-anchor=\"middle\">{e(word)}</text></g>")
            continue
        w, h = 150, 40
        parts.append(f"<g data-output=\"{key}\" data-on=\"{str(state).lower()}\"><line x1=\"{x + w / 2}\" "
                     f"y1=\"{y + h / 2}\" x2=\"{lx}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"4\"/>"
                     f"<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" fill=\"{colour}\"/>"
                     f"<text x=\"{x + w / 2}\" y=\"{y + 17}\" text-anchor=\"middle\">{e(label)}</text>"
                     f"<text x=\"{x + w / 2}\" y=\"{y + 33}\" text-anchor=\"middle\">{e(word)}</text></g>")
    parts.append("</svg>")
    return "".join(parts)


def _trend(config: Any, trend: list[tuple[float, dict[str, float]]], key: str, label: str,
           lim_key: str, now_ts: float) -> str:
    """One series of the last 60 minutes as an SVG polyline, with its warning and trip lines."""
    w, h, pad = 300, 70, 4
    pts = [(ts, vals[key]) for ts, vals in trend if key in vals]
    lim = {k: v for k, v in limits(config, lim_key if lim_key != "o2" else "o2_a").items()}
    values = [v for _, v in pts] + list(lim.values())
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    t0 = now_ts - 3600.0

    def y(v: float) -> str:
        return f"{h - pad - (v - lo) / (hi - lo) * (h - 2 * pad):.1f}"

    def xy(ts: float, v: float) -> str:
        return f"{pad + (ts - t0) / 3600.0 * (w - 2 * pad):.1f},{y(v)}"

    lines = "".join(
        f"<line x1=\"{pad}\" x2=\"{w - pad}\" y1=\"{y(v)}\" y2=\"{y(v)}\" "
        f"stroke=\"{'#ef4444' if k.startswith('trip') else '#f59e0b'}\" stroke-dasharray=\"4 3\"/>"
        for k, v in lim.items())
    poly = (f"<polyline fill=\"none\" stroke=\"#38bdf8\" stroke-width=\"1.5\" "
            f"points=\"{' '.join(xy(ts, v) for ts, v in pts)}\"/>" if pts else "")
    last = f"{pts[-1][1]:g}" if pts else "no data"
    return (f"<figure style=\"margin:0\" data-trend=\"{e(key)}\" data-points=\"{len(pts)}\">"
            f"<figcaption>{e(label)}: {e(last)} <span class=\"muted\">(60 min, {lo:g} to {hi:g})</span>"
            f"</figcaption><svg class=\"trend\" viewBox=\"0 0 {w} {h}\">{lines}{poly}</svg></figure>")


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def cell(view: dict[str, Any], name: str, config: Any, now_ts: float,
         calib: dict[str, Any] | None = None) -> str:
    """calib: Hmi.calibration(name), the gas sensors' records from the state dir (None: not shown)."""
    c = view["cells"].get(name)
    if c is None:
        return (_link_banner(view) + f"<p>cell {e(name)}: nothing heard from it on the broker yet</p>"
                + (calibration(calib) if calib is not None else ""))
    st, tel = c["status"] or {}, c["telemetry"] or {}
    state = c["state"]
    causes = [str(x) for x in st.get("causes") or []] if st.get("state") == state else []
    action = next_action(state or "", config)[0] if state else ""
    out = [_link_banner(view), f"<section><div>{_state_badge(state, big=True)}{_flags(c)} "
           f"<span class=\"age muted\">telemetry {e(_age(c['age']))}</span></div>"]
    if state and isinstance(st.get("since"), int | float) and st.get("state") == state:
        out.append(f"<div class=\"muted\">since {_when(st['since'])}</div>")
    if action:
        out.append(f"<p>next: <b class=\"next-action\">{e(action)}</b></p>")
    if causes:
        out.append("<p>first-out: <span class=\"cause first-out\">" + e(causes[0]) + "</span></p>")
        if causes[1:]:
            out.append("<p>also latched: " + ", ".join(f"<span class=\"cause\">{e(x)}</span>"
                                                      for x in causes[1:]) + "</p>")
    out.append("</section><div class=\"grid\"><section><h2>alarms</h2>")
    alarms = [a for a in st.get("alarms") or [] if isinstance(a, dict)]
    if alarms:
        out.append("<table><tr><th>alarm</th><th>severity</th><th>acknowledged</th></tr>" + "".join(
            f"<tr class=\"alarm\"><td>{e(str(a.get('name')))}</td><td>{e(str(a.get('severity', '')))}</td>"
            f"<td class=\"{'' if a.get('acked') else 'warn'}\">{'yes' if a.get('acked') else 'NO'}</td></tr>"
            for a in alarms) + "</table>")
    else:
        out.append("<p class=\"muted\">no active alarm</p>")
    outputs = tel.get("outputs") or st.get("outputs") or {}
    out.append(f"</section><section><h2>outputs</h2>{_sketch(outputs)}</section></div>")
    out.append(f"<section><h2>sensors</h2>{_sensors(config, tel)}</section>")
    if calib is not None:
        out.append(calibration(calib))
    out.append("<section><h2>trends, last 60 minutes</h2><div class=\"grid\">")
    out += [_trend(config, c["trend"], k, label, lk, now_ts) for k, label, lk in TRENDS]
    out.append("</div></section><div class=\"grid\"><section><h2>command replies</h2>")
    if c["replies"]:
        out.append("<table>" + "".join(
            f"<tr class=\"reply\" data-accepted=\"{str(r.get('accepted')).lower()}\">"
            f"<td>{_when(r.get('ts'))}</td>"
            f"<td>{e(str(r.get('action')))}</td><td>{e(str(r.get('by') or ''))}</td>"
            f"<td class=\"{'' if r.get('accepted') else 'fault'}\">"
            f"{'accepted' if r.get('accepted') else 'REFUSED'}"
            f"</td><td>{e(str(r.get('reason') or ''))}</td><td>{e(str(r.get('state') or ''))}</td></tr>"
            for r in c["replies"]) + "</table>")
    else:
        out.append("<p class=\"muted\">none yet</p>")
    out.append("</section><section><h2>event log (newest first)</h2><table>")
    for ev in reversed(c["events"][-20:]):
        skip = ("t", "ts", "seq", "type", "outputs", "commanded", "historical")
        rest = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in ev.items() if k not in skip)
        out.append(f"<tr class=\"event\"><td>{_when(ev.get('ts'))}</td><td>{e(str(ev.get('seq', '')))}</td>"
                   f"<td>{e(str(ev.get('type', '?')))}</td><td>{e(rest[:200])}</td></tr>")
    out.append("</table></section></div>")
    return "".join(out)


def commands_panel(name: str, actions: tuple[str, ...]) -> str:
    confirm = {"shutdown": "Shut the cell down?", "stop": "", "reset": "Reset the latched trip remotely?"}
    buttons = "".join(
        f"<button type=\"button\" data-action=\"{a}\""
        f" class=\"{'danger' if a in ('stop', 'shutdown') else ''}\""
        + (f" data-confirm=\"{e(confirm[a])}\"" if confirm.get(a) else "") + f">{a}</button>"
        for a in actions)
    return (f"<section><h2>commands</h2><form id=\"cmds\" data-url=\"/cell/{e(name)}/cmd\">"
            "<label>your name <input id=\"by\" maxlength=\"40\" autocomplete=\"name\"></label> "
            f"{buttons}<div id=\"cmdout\" class=\"muted\">sent over the cmd topic; the controller's own "
            "guards decide, its reply shows below</div></form></section>")


def _calibration_word(r: dict[str, Any], applies: bool) -> tuple[str, str]:
    """(the words of `crushcell calibration show` for a row, a CSS class)."""
    if not applies:   # no calibration.json on the simulated cell: no record either
        return "never recorded: not enforced on the simulated cell", "muted"
    if r["last"] is None:
        return "never recorded: blocks start", "fault"
    if r["overdue"]:
        return "OVERDUE: blocks start", "fault"
    return ("due", "warn") if r["due"] else ("ok", "")


def calibration(c: dict[str, Any]) -> str:
    """The cell view's section of bump tests and calibrations (Hmi.calibration's answer)."""
    out = ["<section id=\"calibration\"><h2>gas sensors: bump tests and calibrations</h2>"]
    if c.get("other"):
        out.append(f"<p class=\"muted\" id=\"calibration-note\">recorded in that cell's own state dir; this "
                   f"HMI reads only the state dir of cell {e(c['cell'])}: {e(c['dir'])}</p></section>")
        return "".join(out)
    if c.get("problem"):
        out.append(f"<p class=\"fault\" id=\"calibration-problem\">not shown: {e(c['problem'])}</p>"
                   "</section>")
        return "".join(out)
    backend, path = c["backend"], c["path"]
    if not c["applies"]:
        out.append(f"<p class=\"muted\">{e(path)}: none. Judged as the config's [hal] backend = "
                   f"{e(backend)}: the simulated cell applies the records only once a calibration.json "
                   "exists, so nothing here blocks start there; on the board (hardware) every sensor never "
                   "recorded blocks start.</p>")
    elif backend != "hardware":
        out.append(f"<p class=\"muted\">{e(path)} exists: the simulated cell ([hal] backend = {e(backend)}) "
                   "enforces these records as the board does.</p>")
    elif not c["exists"]:
        out.append(f"<p class=\"muted\">{e(path)}: none. Judged for the board ([hal] backend = hardware): "
                   "every sensor never recorded blocks start.</p>")
    if c.get("error"):
        out.append(f"<p class=\"fault\">{e(c['error'])}: every sensor counts as never tested, as the "
                   "controller counts it</p>")
    overdue = c["overdue"]
    if c["applies"] and overdue:
        out.append("<p class=\"fault\" id=\"calibration-blocks\">start is blocked: "
                   + ", ".join(e(s) for s in overdue) + " not bump-tested or calibrated in time "
                   "(interval + grace)</p>")
    elif c["applies"]:
        out.append("<p id=\"calibration-blocks\">start is not blocked by a bump test or a calibration</p>")
    out.append("<table><tr><th>sensor</th><th>kind</th><th>last</th><th>due on</th><th>status</th></tr>")
    for r in c["rows"]:
        word, cls = _calibration_word(r, c["applies"])
        out.append(f"<tr class=\"calibration\" data-sensor-kind=\"{e(r['sensor'])}:{e(r['kind'])}\">"
                   f"<td>{e(r['sensor'])}</td><td>{e(r['kind'])}</td><td>{e(r['last'] or '-')}</td>"
                   f"<td>{e(r['due_on'] or '-')}</td><td class=\"{cls}\">{e(word)}</td></tr>")
    out.append(f"</table><p class=\"muted\">as of {e(c['today'])} on this machine's date; read from "
               f"{e(c['dir'])} (crushcell calibration show)</p></section>")
    return "".join(out)


def _local(rec: dict[str, Any]) -> str:
    from controller.hmi.journal import record_time

    t = record_time(rec)
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t is not None else "-"


def journal(q: Any, problems: list[str], result: Any, where: str, cell_id: str) -> str:
    """The journal search page: the form, then the problems, or what matched (newest first)."""
    from controller.hmi.journal import MAX_RESULTS, TYPES, causes_of

    typed = q.typed
    options = "".join(f"<option value=\"{t}\"{' selected' if typed.get('type') == t else ''}>"
                      f"{t or 'any type'}</option>" for t in ("", *TYPES))

    def field(name: str, label: str, hint: str, size: int = 20) -> str:
        return (f"<label>{label} <input name=\"{name}\" value=\"{e(typed.get(name, ''))}\" size=\"{size}\" "
                f"placeholder=\"{e(hint)}\"></label> ")

    out = [f"<section><h2>audit journal of cell {e(cell_id)}</h2><p class=\"muted\">{e(where)}: every trip, "
           "command, state change, config and calibration record the controller journaled. Times: an ISO "
           "time (without a zone: this machine's local time) or a duration back from now (90s, 30m, 2h, "
           f"7d). Cause: part of a cause, e.g. co_rise. At most the newest {MAX_RESULTS} matching records "
           "are shown.</p><form method=\"get\" action=\"/journal\" id=\"journal-form\">",
           field("since", "since", "2h or 2026-11-29T06:00"), field("until", "until", "e.g. 30m"),
           f"<label>type <select name=\"type\">{options}</select></label> ",
           field("cause", "cause", "e.g. co_rise", 14), field("limit", "limit", str(MAX_RESULTS), 4),
           "<button type=\"submit\">search</button></form></section>"]
    if problems:
        out.append("<section><p class=\"fault\" id=\"journal-problem\">not searched: "
                   + "<br>".join(e(p) for p in problems) + "</p></section>")
        return "".join(out)
    if result.problem:
        out.append(f"<section><p class=\"fault\" id=\"journal-problem\">the journal cannot be read here: "
                   f"{e(result.problem)}</p></section>")
        return "".join(out)
    if not result.files:
        summary = "no journal.jsonl in the state dir yet: the controller has journaled nothing there"
    elif result.total == 0:
        summary = f"no record matches (searched {result.files} journal file{'s' * (result.files != 1)})"
    elif result.total > len(result.records):
        summary = (f"{result.total} records match; showing the newest {len(result.records)}. Narrow the time "
                   "range, the type or the cause to see older ones.")
    else:
        summary = f"{result.total} record{'s' * (result.total != 1)} match, newest first"
    out.append(f"<section><p id=\"journal-summary\">{e(summary)}</p>")
    if result.records:
        skip = ("t", "ts", "seq", "type", "outputs", "commanded", "cause", "causes", "restored",
                "from_journal")
        out.append("<table><tr><th>time</th><th>seq</th><th>type</th><th>cause</th><th>details</th></tr>")
        for rec in result.records:
            rest = " ".join(f"{k}={json.dumps(v, separators=(',', ':'), default=str)}"
                            for k, v in rec.items() if k not in skip)
            out.append(f"<tr class=\"jrec\" data-type=\"{e(str(rec.get('type', '')))}\">"
                       f"<td title=\"{e(str(rec.get('ts', '')))}\">{e(_local(rec))}</td>"
                       f"<td class=\"num\">{e(str(rec.get('seq', '')))}</td>"
                       f"<td>{e(str(rec.get('type', '?')))}</td>"
                       f"<td class=\"cause\">{e(', '.join(causes_of(rec)))}</td>"
                       f"<td>{e(rest[:300])}</td></tr>")
        out.append("</table>")
    out.append("</section>")
    return "".join(out)
