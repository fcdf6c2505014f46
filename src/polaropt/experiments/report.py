"""Reports built from run folders only: ``NAME/report.md`` per experiment, and ``index.md`` and
``index.html`` for the whole suite.

The HTML page reads top-down the way a researcher asks: how much reproduced (one summary row per
experiment), what did not (every NOT reproduced claim, linked to its experiment), then each experiment with
its figures at the page's width (its key figure first), its claims, its notes and configuration. The page
links the figures in the run folders beside it (embedding them made a 3 MB page): keep the folder together.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .framework import KINDS, field_help
from .records import write_text_atomic

def _title(source: str) -> str:
    """A claim's source without its section: the text before the first comma outside parentheses."""
    depth = 0
    for i, ch in enumerate(source):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            return source[:i].strip()
    return source.strip()


# What the suite's seed files are, as a reader can find them (author, title, where)
CITATIONS = {
    "000": "Ziming Liu, “Optimization 2 -- Elementwise Scale Reparametrization”, blog post, 2026-01-24",
    "001": "Ziming Liu, “Optimization 1 -- Norm reparametrization”, blog post, 2026-01-23",
    "002": "Xiaoxia Wu, Edgar Dobriban, Tongzheng Ren, Shanshan Wu, Zhiyuan Li, Suriya Gunasekar, Rachel Ward, "
           "Qiang Liu, “Implicit Regularization and Convergence for Weight Normalization”, NeurIPS 2020, "
           "arXiv:1911.07956",
    "003": "Hung-Hsu Chou, Holger Rauhut, Rachel Ward, “Robust Implicit Regularization via Weight Normalization”, "
           "2023, arXiv:2305.05448",
    "004": "UC Berkeley CS182 (Deep Learning), discussion: optimizers as penalized linear improvement, implicit "
           "bias, the RMS norm",
}


def citations(sources) -> list[str]:
    """The citation of each seed file an experiment reads (its file name when unknown)."""
    return [f"[{str(f)[:3]}] {CITATIONS[str(f)[:3]]}" if str(f)[:3] in CITATIONS else str(f) for f in sources]


def source_names(claims: list[dict]) -> list[str]:
    """The sources the claims cite, by name, each once."""
    return list(dict.fromkeys(_title(c["source"]) for c in claims))


def counts(claims: list[dict]) -> str:
    """The verdicts counted by kind (see ``Claim``): only a source claim can disagree with a source."""
    kinds = {k: [c for c in claims if c.get("kind", "source") == k] for k in KINDS}
    ok = {k: sum(c["passed"] for c in v) for k, v in kinds.items()}
    parts = [f"{ok['source']} of {len(kinds['source'])} source claims reproduced"]
    if kinds["derived"]:
        parts.append(f"{ok['derived']} of {len(kinds['derived'])} derived checks hold (the project's own "
                     "derivations from the sources, which no source can contradict)")
    if kinds["beyond"]:
        parts.append(f"{ok['beyond']} of {len(kinds['beyond'])} findings beyond the sources hold")
    return "; ".join(parts)


def counted(runs) -> list:
    """The runs the headline counts: the full ones when there is any, else the ``--quick`` ones."""
    return [r for r in runs if not r[2]["quick"]] or list(runs)


def headline(runs, experiments) -> str:
    """The index's lead: the suite's claims counted by kind; a benchmark's claims (runs under ``bench/``, which
    test recipes, not the sources) counted on their own. ``--quick`` runs never mix with full ones: beside any
    full run they are named apart and not counted; alone, the line says they are quick."""
    bench = {name for name, e in experiments.items() if e.path.startswith("bench/")}
    use = counted(runs)
    quick = [r for r in runs if r not in use]
    suite = [c for name, *_, claims in use if name not in bench for c in claims]
    tasks = [c for name, *_, claims in use if name in bench for c in claims]
    n = len([r for r in use if r[0] not in bench])
    parts = [f"{counts(suite)}, over {n} experiments"] if suite else []
    if tasks:
        parts.append(f"benchmark: {sum(c['passed'] for c in tasks)} of {len(tasks)} claims hold over "
                     f"{len(use) - n} tasks")
    line = "; ".join(parts)
    if use and use[0][2]["quick"]:
        line = "--quick runs only (tiny settings for tests; their verdicts say little): " + line
    if quick:
        line += (f" (not counted: --quick runs of {', '.join(r[0] for r in quick)}, "
                 f"{sum(len(r[3]) for r in quick)} claims on tiny settings)")
    return line


def _kind(c) -> str:
    """A claim's kind as a table shows it (nothing for a source claim)."""
    return {"source": "", "derived": " (derived check)", "beyond": " (beyond the sources)"}[c.get("kind", "source")]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_table(claims: list[dict], name: str | None = None) -> list[str]:
    head = ("| experiment " if name is not None else "") + "| claim | source | statement | expected | measured | result |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in claims:
        verdict = "**reproduced**" if c["passed"] else "**NOT reproduced**"
        prefix = f"| {name} " if name is not None else ""
        rows.append(prefix + f"| `{c['id']}`{_kind(c)} | {_cell(c['source'])} | {_cell(c['statement'])} | {_cell(c['expected'])} "
                    f"| {_cell(c['measured'])} | {verdict} |")
    return rows


def experiment_report(exp, config, claims, figures: list[str], meta: dict, notes: str) -> str:
    """``NAME/report.md`` from the claims, figures and meta of one run."""
    claims = [c.to_dict() if hasattr(c, "to_dict") else c for c in claims]
    how = ("with --quick (reduced settings for tests: the claims are checked, but on far less data than the full "
           "run, so their verdicts say little)" if meta["quick"] else "at full settings")
    v = meta["versions"]
    rebuilt = f" Outputs rebuilt from the records on {meta['rebuilt']}." if meta.get("rebuilt") else ""
    lines = [f"# {exp.name}", "", exp.description, "",
             "Sources: " + "; ".join(citations(exp.sources)) + ". Each claim names its source (by that number) and "
             "section; "
             "a derived check is polaropt's own derivation from those sources, and a finding beyond the sources a "
             "question they do not ask.", "",
             f"{counts(claims)}. Run {how}, in {meta['wall_time_s']:.1f} s, "
             f"polaropt {v['polaropt']}, torch {v['torch']}, commit {meta['git_commit'] or 'unknown'}.{rebuilt}", "",
             "## Claims", ""] + claims_table(claims)
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures if f.endswith(".png")]
    lines += ["", "## Configuration", "", "| key | value | meaning |", "|---|---|---|"]
    meaning = {name: text for name, _, _, text in field_help(exp.config)}
    lines += [f"| {k} | `{val}` | {_cell(meaning.get(k, ''))} |" for k, val in meta["config"].items()]
    lines += ["", "## Notes, departures from the source", "", notes.strip(), ""]
    return "\n".join(lines)


def _runs(out_root: Path, experiments: dict):
    """(name, folder, meta, claims) of every finished run in ``out_root``, in the suite's order."""
    for name, exp in experiments.items():
        d = out_root / exp.path
        if (d / "meta.json").exists() and (d / "claims.json").exists():
            yield name, d, json.loads((d / "meta.json").read_text()), json.loads((d / "claims.json").read_text())


def _key_figure(exp, folder: Path) -> Path | None:
    pngs = sorted(folder.glob("*.png"))
    if exp.key_figure is not None and (folder / exp.key_figure).exists():
        return folder / exp.key_figure
    return pngs[0] if pngs else None


def _img(png: Path, out_root: Path) -> str:
    """The figure linked by its path from the page (embedding every PNG made the page a 3 MB file); a linked
    figure opens full size."""
    src = html.escape(png.relative_to(out_root).as_posix())
    return f"<a href='{src}' title='open full size'><img alt='{html.escape(png.name)}' src='{src}' loading='lazy'></a>"


def _index_md(runs, experiments, missing, passed, total, summary=None) -> str:
    md = ["# polaropt results", "", f"{headline(runs, experiments)} ({passed} of {total} claims in all)."]
    if summary is not None:
        md += ["", f"Benchmark, which recipe to use: [{summary}]({summary}) (recipe × task table and figure)."]
    if missing:
        md.append(f"Not run (or unfinished): {', '.join(missing)}.")
    md += ["", "| experiment | description | claims reproduced | quick | wall time (s) | report |", "|---|---|---|---|---|---|"]
    for name, d, meta, claims in runs:
        md.append(f"| {name} | {_cell(experiments[name].description)} | {sum(c['passed'] for c in claims)}/{len(claims)} "
                  f"| {meta['quick']} | {meta['wall_time_s']:.1f} | [{experiments[name].path}/report.md]({experiments[name].path}/report.md) |")
    failed = [(name, c) for name, _, _, claims in counted(runs) for c in claims if not c["passed"]]
    md += ["", f"## Not reproduced ({len(failed)})", ""]
    md += [f"- `{c['id']}` ({name}): {_cell(c['statement'])} Expected {_cell(c['expected'])}; measured "
           f"{_cell(c['measured'])}." for name, c in failed]
    md += ["", "## All claims", ""]
    for i, (name, d, meta, claims) in enumerate(runs):
        md += claims_table(claims, name)[0 if i == 0 else 2:]
    return "\n".join(md) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:auto;padding:0 16px;color:#222}
h1{margin-bottom:4px}.lead{font-size:17px}table{border-collapse:collapse;width:100%}
td,th{border:1px solid #ddd;padding:5px 7px;font-size:13px;vertical-align:top;text-align:left}
td code{white-space:nowrap}
th{background:#f4f4f4}.ok{color:#1a7f37;font-weight:600}.no{color:#b42318;font-weight:600}
tr.no-row{background:#fff4f2}.bar{display:inline-block;height:9px;background:#1a7f37;vertical-align:middle}
.barno{display:inline-block;height:9px;background:#e5a29a;vertical-align:middle}
img{max-width:100%;border:1px solid #eee;margin-bottom:6px}section{border-top:2px solid #ddd;margin-top:26px;padding-top:6px}
details summary{cursor:pointer;color:#555}.muted{color:#666;font-size:13px}"""


def _verdict(c) -> str:
    return "<span class='ok'>reproduced</span>" if c["passed"] else "<span class='no'>NOT reproduced</span>"


def _index_html(runs, experiments, missing, passed, total, summary=None, out_root=None) -> str:
    e = html.escape
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>polaropt results</title>",
         f"<style>{STYLE}</style></head><body>", "<h1>polaropt results</h1>",
         f"<p class='lead'>{e(headline(runs, experiments))} ({passed} of {total} claims in all). "
         f"<a href='#not-reproduced'>{total - passed} not reproduced</a>.</p>"]
    if missing:
        h.append(f"<p class='no'>Not run (or unfinished): {e(', '.join(missing))}.</p>")
    if summary is not None:  # the benchmark's answer first: its recipe × task figure, linked to its table
        png = (out_root / summary).with_suffix(".png")
        tasks = [meta for name, _, meta, _ in runs if experiments[name].path.startswith("bench/")]
        quick = bool(tasks) and all(meta["quick"] for meta in tasks)  # summary.py shows quick runs only then
        h.append(f"<h2>Benchmark: which recipe?</h2><p><a href='{e(summary)}'>{e(summary)}</a>: a recommendation per "
                 "task, and each recipe's paired difference to tuned AdamW and Muon, with the time to AdamW's loss.</p>"
                 + ("<p class='no'>A --quick run: tiny settings for tests, these numbers say nothing about the "
                    "recipes.</p>" if quick else "")
                 + (_img(png, out_root) if png.exists() else ""))
    h.append("<h2>Summary</h2><table><tr><th>experiment</th><th>source</th><th>claims reproduced</th></tr>")
    for name, d, meta, claims in runs:
        exp, ok = experiments[name], sum(c["passed"] for c in claims)
        quick = " <span class='muted'>(--quick)</span>" if meta["quick"] else ""
        h.append(f"<tr><td><a href='#{e(name)}'><b>{e(name)}</b></a>{quick}<br><span class='muted'>"
                 f"{e(exp.description)}</span></td><td>{'<br>'.join(map(e, source_names(claims)))}</td>"
                 f"<td>{ok}/{len(claims)}<br><span class='bar' style='width:{8 * ok}px'></span>"
                 f"<span class='barno' style='width:{8 * (len(claims) - ok)}px'></span></td></tr>")
    h.append("</table>")
    failed = [(name, c) for name, _, _, claims in counted(runs) for c in claims if not c["passed"]]
    h.append(f"<h2 id='not-reproduced'>Not reproduced ({len(failed)})</h2>")
    h.append("<table><tr><th>claim</th><th>statement</th><th>expected</th><th>measured</th></tr>")
    for name, c in failed:
        h.append(f"<tr class='no-row'><td><a href='#{e(name)}'>{e(name)}</a><br><code>{e(c['id'])}</code>{e(_kind(c))}</td>"
                 f"<td>{e(c['statement'])}</td><td>{e(c['expected'])}</td><td>{e(c['measured'])}</td></tr>")
    h.append("</table>")
    for name, d, meta, claims in runs:
        exp = experiments[name]
        ok = sum(c["passed"] for c in claims)
        h.append(f"<section id='{e(name)}'><h2>{e(name)} <span class='muted'>{ok}/{len(claims)} reproduced · "
                 f"<a href='#{e(name)}-notes'>notes and configuration</a> (below; Markdown: "
                 f"<a href='{e(exp.path)}/report.md'>report.md</a>) · {meta['wall_time_s']:.1f} s</span></h2>"
                 f"<p>{e(exp.description)}</p>")
        key = _key_figure(exp, d)  # the key figure first, each at the page's width (multi-panel figures stay legible)
        h += [_img(png, out_root) for png in sorted(d.glob("*.png"), key=lambda png: png != key)]
        h.append("<table><tr><th>claim</th><th>result</th></tr>")
        for c in claims:
            h.append(f"<tr{' class=no-row' if not c['passed'] else ''}><td><code>{e(c['id'])}</code>{e(_kind(c))} "
                     f"{e(c['statement'])}<details><summary>expected / measured</summary><p><b>expected</b> "
                     f"{e(c['expected'])}</p><p><b>measured</b> {e(c['measured'])}</p><p class='muted'>"
                     f"{e(c['source'])}</p></details></td><td>{_verdict(c)}</td></tr>")
        h.append("</table>")
        h.append(_report_details(d / "report.md", name))
        h.append("</section>")
    h.append("</body></html>")
    return "\n".join(h)


def _report_details(report: Path, name: str) -> str:
    """The report's sources, notes and configuration on the page itself (a browser shows a linked ``.md`` raw)."""
    if not report.exists():
        return ""
    text = report.read_text()
    parts = {}
    for title in ("Notes, departures from the source", "Configuration"):
        start = text.find(f"\n## {title}\n")
        if start >= 0:
            end = text.find("\n## ", start + 4)
            parts[title] = text[start + len(title) + 5:end if end >= 0 else None].strip()
    sources = next((line for line in text.splitlines() if line.startswith("Sources: ")), "")
    anchor = html.escape(name)
    body = [f"<p class='muted'>{html.escape(sources)}</p>"] if sources else []
    body += [f"<h4>{html.escape(t)}</h4><pre style='white-space:pre-wrap'>{html.escape(v)}</pre>" for t, v in parts.items()]
    return f"<details id='{anchor}-notes'><summary>notes and configuration</summary>{''.join(body)}</details>"


def write_index(out_root: Path, experiments: dict) -> Path:
    """Write ``index.md`` and ``index.html`` for every finished run in ``out_root``; return index.md."""
    out_root = Path(out_root)
    runs = list(_runs(out_root, experiments))
    # an experiment is missing when another of its group ran (the suite's, or the benchmark's bench/ folder)
    group = {n: e.path.split("/")[0] if "/" in e.path else "" for n, e in experiments.items()}
    ran = {r[0] for r in runs}
    missing = [n for n in experiments if n not in ran and group[n] in {group[r] for r in ran}]
    total = sum(len(c) for *_, c in counted(runs))
    passed = sum(sum(x["passed"] for x in c) for *_, c in counted(runs))
    summary = "bench/summary.md" if (out_root / "bench" / "summary.md").exists() else None
    write_text_atomic(out_root / "index.md", _index_md(runs, experiments, missing, passed, total, summary))
    write_text_atomic(out_root / "index.html", _index_html(runs, experiments, missing, passed, total, summary,
                                                           out_root))
    return out_root / "index.md"
