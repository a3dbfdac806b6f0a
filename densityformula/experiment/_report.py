"""``results/index.html``: every experiment's claims (with control and power), figures and tables."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import _store

__all__ = ["write_index", "collect", "power_text", "control_text"]

_MAX_TABLE_ROWS = 40

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;line-height:1.45;"
    "color:#222}h2{margin-top:2.2em;border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:.6em 0;"
    "font-size:.9em}td,th{padding:3px 8px;border-bottom:1px solid #e4e4e4;vertical-align:top;text-align:left}"
    "th{background:#f4f4f4}.pass{color:#07600f}.fail{color:#b00;font-weight:bold}.meta{color:#666;font-size:.88em}"
    "img{max-width:100%;border:1px solid #eee}.num{font-variant-numeric:tabular-nums;white-space:nowrap}"
    "#broken-images{display:none;color:#b00;font-weight:bold}.scroll{overflow-x:auto;max-width:100%}"
)

# marks every image with its natural width once the page has loaded (a broken image reads 0), and
# says so on the page: what a reader sees and what the headless-browser test reads
_SCRIPT = (
    "<script>window.addEventListener('load',function(){var bad=0;"
    "document.querySelectorAll('img').forEach(function(i){i.setAttribute('data-natural-width',i.naturalWidth);"
    "if(!i.naturalWidth){bad++;}});var b=document.getElementById('broken-images');"
    "b.setAttribute('data-count',bad);if(bad){b.style.display='block';b.textContent=bad+' image(s) failed to load';}"
    "document.body.setAttribute('data-loaded','1');});</script>"
)


def collect(
    summaries: Sequence[Dict[str, Any]], out: Path, experiments: Optional[Sequence[Any]] = None
) -> List[Dict[str, Any]]:
    """This run's summaries plus the complete results of other experiments already in ``out`` (by name).

    With ``experiments`` (the experiments of the checkout), each result not from this run is
    re-keyed against today's code: one whose key differs gets ``"stale"`` (why), so the report
    never shows an old verdict as current.
    """
    by_name = {s["name"]: s for s in summaries}
    known = {e.name: e for e in experiments or ()}
    for path in sorted(out.glob("*/summary.json")):
        if path.parent.name not in by_name:
            s = _store.load_result(path)
            if s is None or s.get("name") != path.parent.name:
                continue
            if experiments is not None:
                s = dict(s)
                exp = known.get(s["name"])
                inputs = s.get("inputs") or {}
                if exp is None:
                    s["stale"] = "no experiment of this name in the experiments folder"
                else:
                    now = _store.result_key(exp.source_files(), quick=bool(s.get("quick")),
                                            seed=int(s.get("seed", 0)), device=str(inputs.get("device", "cpu")))
                    if now["key"] != s.get("key"):
                        s["stale"] = "the code or versions changed since it was computed: rerun it"
            by_name[s["name"]] = s
    return [by_name[k] for k in sorted(by_name)]


def control_text(c: Dict[str, Any]) -> str:
    ctrl = c.get("control") or {}
    size = f"{ctrl.get('size', float('nan')):.3g} {ctrl.get('unit', '')}".strip()
    return f"{ctrl.get('what', '?')} ({size})"


def power_text(c: Dict[str, Any]) -> str:
    p = c.get("power")
    if not p:
        return "n/a"
    rel = {"=": "", "<": "< ", "<=": "<= "}.get(p.get("relation", ""), "")
    return f"{rel}{p['size']:.3g} {p.get('unit', '')}".strip()


def _values(v: Dict[str, Any]) -> str:
    return "<br>".join(
        f"{html.escape(k)}: <span class='num'>{html.escape(str(q.get('text', q.get('value'))))}</span>"
        for k, q in v.items()
    )


def _table_html(path: Path) -> str:
    import pandas as pd

    frame = pd.read_csv(path)
    more = len(frame) - _MAX_TABLE_ROWS
    body: str = frame.head(_MAX_TABLE_ROWS).to_html(
        index=False, float_format=lambda v: f"{v:.5g}", border=0, classes="table"
    )
    if more > 0:
        body += f"<p class='meta'>({more} more rows in the CSV)</p>"
    return body


def _claims_table(s: Dict[str, Any]) -> List[str]:
    parts = [
        "<table class='claims'><tr><th>claim</th><th>value</th><th>expected</th><th>negative control</th>"
        "<th>control outcome</th><th>power (smallest defect detected)</th><th>verdict</th></tr>"
    ]
    for c in s["claims"]:
        status = c.get("status", "holds" if c.get("passed") else "fails")
        cls = "pass" if status == "holds" else "fail"
        ctrl = c.get("control") or {}
        detected = "detected (check fails)" if not ctrl.get("passed", True) else "NOT detected: the claim cannot fail"
        parts.append(
            f"<tr data-claim='{html.escape(str(c['name']))}'><td>{html.escape(str(c['name']))}</td>"
            f"<td>{_values(c.get('value', {}))}</td><td>{html.escape(str(c['expected']))}</td>"
            f"<td class='control'>{html.escape(control_text(c))}</td>"
            f"<td class='{'pass' if not ctrl.get('passed', True) else 'fail'}'>{detected}</td>"
            f"<td class='num power'>{html.escape(power_text(c))}</td><td class='{cls}'>{html.escape(status)}</td></tr>"
        )
    parts.append("</table>")
    return parts


def write_index(
    summaries: Sequence[Dict[str, Any]], out: Path, experiments: Optional[Sequence[Any]] = None
) -> Path:
    """Write ``out/index.html`` for ``summaries`` and every other complete result in ``out``; its path.

    Pass ``experiments`` to have results not from this run checked for staleness (:func:`collect`).
    """
    out = Path(out)
    summaries = collect(summaries, out, experiments)
    n_claims = sum(len(s["claims"]) for s in summaries)
    n_hold = sum(c.get("status") == "holds" for s in summaries for c in s["claims"])
    n_detect = sum(not (c.get("control") or {}).get("passed", True) for s in summaries for c in s["claims"])
    crashed = [s["name"] for s in summaries if s.get("error")]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>densityformula results</title>",
        f"<style>{_CSS}</style>{_SCRIPT}</head><body>",
        "<h1>densityformula: reproduced claims</h1>",
        "<p id='broken-images' data-count='0'></p>",
        f"<p id='tally'>{n_hold} of {n_claims} claims hold; {n_detect} of {n_claims} negative controls are "
        f"detected (a claim holds only if its deliberately wrong input fails the same check); "
        f"{len(summaries)} experiments" + (f", crashed: {', '.join(crashed)}" if crashed else "") + ".</p><ul>",
    ]
    for s in summaries:
        parts.append(f"<li><a href='#{html.escape(s['name'])}'>{html.escape(s['title'])}</a></li>")
    parts.append("</ul>")
    for s in summaries:
        name = s["name"]
        parts.append(f"<h2 id='{html.escape(name)}'>{html.escape(s['title'])}</h2>")
        if s.get("claim"):
            parts.append(f"<p><em>{html.escape(s['claim'])}</em></p>")
        inputs = s.get("inputs") or {}
        when = html.escape(str(s.get("computed_at", "?")))
        how = f"{'quick' if s.get('quick') else 'full'} mode, seed {s.get('seed')}, device {s.get('device')}"
        versions = f"densityformula {inputs.get('version', '?')}, torch {inputs.get('torch', '?')}"
        parts.append(
            f"<p class='meta'>computed {when} in {s.get('seconds', 0):.1f} s; {html.escape(how)}, "
            f"{html.escape(versions)}, inputs key {html.escape(str(s.get('key', '?'))[:12])}. "
            f"<a href='{html.escape(name)}/summary.json'>summary.json</a></p>"
        )
        if s.get("stale"):
            parts.append(f"<p class='fail stale'>stale: {html.escape(str(s['stale']))}.</p>")
        if s.get("error"):
            parts.append("<p class='fail'>crashed: not a result; the next run retries it.</p>")
            if s.get("kept_previous"):
                parts.append(f"<p>The previous complete results in <a href='{name}/'>{name}/</a> were kept.</p>")
            parts.append(f"<pre class='fail'>{html.escape(s['error'])}</pre>")
        if s["claims"]:
            parts.extend(_claims_table(s))
        for note in s.get("notes", []):
            parts.append(f"<p>{html.escape(note)}</p>")
        for fig in s.get("figures", []):
            png, pdf = (fig["png"], fig.get("pdf")) if isinstance(fig, dict) else (fig, None)
            link = f" <a href='{name}/{html.escape(pdf)}'>PDF</a>" if pdf else ""
            parts.append(f"<p><img src='{name}/{html.escape(png)}' alt='{html.escape(png)}'>{link}</p>")
        for tab in s.get("tables", []):
            path = out / name / tab
            if path.exists():
                parts.append(f"<p><a href='{name}/{html.escape(tab)}'>{html.escape(tab)}</a></p>"
                             f"<div class='scroll'>{_table_html(path)}</div>")
    parts.append("</body></html>")
    index = out / "index.html"
    _store.write_atomic(index, "\n".join(parts))
    return index

