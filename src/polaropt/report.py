"""Reports built from run directories: ``NAME/report.md``, and ``index.md`` / ``index.html`` for
the whole suite (the HTML embeds its figures, so it is one self-contained file)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .experiments.framework import EXPERIMENTS
from .experiments.records import write_text_atomic


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_table(claims: list[dict], name: str | None = None) -> list[str]:
    head = ("| experiment " if name is not None else "") + "| claim | source | statement | expected | measured | result |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in claims:
        verdict = "**reproduced**" if c["passed"] else "**NOT reproduced**"
        prefix = f"| {name} " if name is not None else ""
        rows.append(prefix + f"| `{c['id']}` | {_cell(c['source'])} | {_cell(c['statement'])} | {_cell(c['expected'])} "
                    f"| {_cell(c['measured'])} | {verdict} |")
    return rows


def experiment_report(exp, config, claims, figures: list[str], meta: dict, notes: str) -> str:
    claims = [c.to_dict() if hasattr(c, "to_dict") else c for c in claims]
    passed = sum(c["passed"] for c in claims)
    how = ("with --quick (reduced settings: the claims are checked, but on less data than the source used)"
           if meta["quick"] else "at full settings")
    v = meta["versions"]
    lines = [f"# {exp.name}", "", exp.description, "",
             "Sources: " + ", ".join(f"`../shared/seeds/{s}`" for s in exp.sources) + ".", "",
             f"{passed} of {len(claims)} claims reproduced. Run {how}, in {meta['wall_time_s']:.1f} s, "
             f"polaropt {v['polaropt']}, torch {v['torch']}, commit {meta['git_commit'] or 'unknown'}.", "",
             "## Configuration", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | `{val}` |" for k, val in meta["config"].items()]
    lines += ["", "## Figures", ""]
    lines += [f"![{f}]({f})" for f in figures if f.endswith(".png")]
    lines += ["", "## Claims", ""] + claims_table(claims)
    lines += ["", "## Notes, departures from the source", "", notes.strip(), ""]
    return "\n".join(lines)


def _runs(out_root: Path):
    for name in EXPERIMENTS:
        d = out_root / name
        if (d / "meta.json").exists() and (d / "claims.json").exists():
            yield name, d, json.loads((d / "meta.json").read_text()), json.loads((d / "claims.json").read_text())


def write_index(out_root: Path) -> Path:
    """Write ``index.md`` and ``index.html`` for every finished run in ``out_root``; return index.md."""
    out_root = Path(out_root)
    runs = list(_runs(out_root))
    missing = [n for n in EXPERIMENTS if n not in {r[0] for r in runs}]
    total = sum(len(c) for *_, c in runs)
    passed = sum(sum(x["passed"] for x in c) for *_, c in runs)
    md = ["# polaropt reproduction suite", "",
          f"{passed} of {total} claims reproduced over {len(runs)} experiments."]
    if missing:
        md.append(f"Not run (or unfinished): {', '.join(missing)}.")
    md += ["", "| experiment | description | claims reproduced | quick | wall time (s) | report |", "|---|---|---|---|---|---|"]
    for name, d, meta, claims in runs:
        md.append(f"| {name} | {_cell(EXPERIMENTS[name].description)} | {sum(c['passed'] for c in claims)}/{len(claims)} "
                  f"| {meta['quick']} | {meta['wall_time_s']:.1f} | [{name}/report.md]({name}/report.md) |")
    md += ["", "## All claims", ""]
    for name, d, meta, claims in runs:
        md += claims_table(claims, name)[0 if name == runs[0][0] else 2:]
    write_text_atomic(out_root / "index.md", "\n".join(md) + "\n")

    h = ["<!doctype html><html><head><meta charset='utf-8'><title>polaropt reproduction suite</title>",
         "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px;font-size:13px;vertical-align:top}.ok{background:#e6f4e6}"
         ".no{background:#fbe3e3}img{max-width:100%}</style></head><body>",
         "<h1>polaropt reproduction suite</h1>",
         f"<p>{passed} of {total} claims reproduced over {len(runs)} experiments.</p>"]
    if missing:
        h.append(f"<p>Not run (or unfinished): {html.escape(', '.join(missing))}.</p>")
    h.append("<table><tr><th>experiment</th><th>claim</th><th>source</th><th>statement</th><th>expected</th>"
             "<th>measured</th><th>result</th></tr>")
    for name, d, meta, claims in runs:
        for c in claims:
            cls, verdict = ("ok", "reproduced") if c["passed"] else ("no", "NOT reproduced")
            h.append(f"<tr class='{cls}'><td>{html.escape(name)}</td><td>{html.escape(c['id'])}</td>"
                     + "".join(f"<td>{html.escape(str(c[k]))}</td>" for k in ("source", "statement", "expected", "measured"))
                     + f"<td>{verdict}</td></tr>")
    h.append("</table>")
    for name, d, meta, claims in runs:
        h.append(f"<h2>{html.escape(name)}</h2><p>{html.escape(EXPERIMENTS[name].description)}</p>")
        for png in sorted(d.glob("*.png")):
            data = base64.b64encode(png.read_bytes()).decode()
            h.append(f"<img alt='{html.escape(png.name)}' src='data:image/png;base64,{data}'>")
    h.append("</body></html>")
    write_text_atomic(out_root / "index.html", "\n".join(h))
    return out_root / "index.md"
