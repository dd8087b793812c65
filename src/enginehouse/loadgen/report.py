"""The report: a rich table on the terminal, JSON, and a self-contained HTML page with the figure.

Everything renders from one JSON-ready dict (see ``enginehouse.cli.bench``), so the three outputs
always agree and a saved JSON can be re-rendered.
"""

from __future__ import annotations

import base64
import html
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from enginehouse.loadgen.stats import compare

METRICS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))
STATS = ("mean", "p50", "p90", "p99")


def add_comparison(report: dict[str, Any]) -> None:
    """Each target against the first at the same level (the baseline's own row is omitted)."""
    results = report["results"]
    first = report["targets"][0]["label"]
    base = {r["level"]: r for r in results if r["target"] == first}
    report["comparison"] = [
        {"target": r["target"], "level": r["level"], "baseline": first, **compare(base[r["level"]], r)}
        for r in results
        if r["target"] != first and r["level"] in base and r["completed"] and base[r["level"]]["completed"]
    ]


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if abs(value) < 10_000 else f"{value:,.0f}"


def _level_name(report: dict[str, Any]) -> str:
    return "conc" if report["mode"] == "concurrency" else "rate"


def _ratios(report: dict[str, Any]) -> dict[tuple[str, float], dict[str, Any]]:
    return {(c["target"], c["level"]): c for c in report.get("comparison") or []}


def summary_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table (shared by the terminal and HTML)."""
    goodput = bool(report.get("slos"))
    ratios = _ratios(report) if "comparison" in report else None
    header = ["target", _level_name(report), "ok", "err", "req/s", "tok/s"]
    header += ["goodput req/s"] if goodput else []
    header += ["TTFT p50", "TTFT p95", "TPOT p50", "E2E p50"]
    if ratios is not None:
        header += ["tok/s ×", "TTFT p50 Δ", "TTFT p50 ×"]
    cells = []
    for r in sorted(report["results"], key=lambda r: r["level"]):
        if r["skipped"]:
            cells.append([r["target"], f"{r['level']:g}", "skipped"] + [""] * (len(header) - 3))  # why: below
            continue
        ttft, tpot, e2e = r["ttft_ms"] or {}, r["tpot_ms"] or {}, r["e2e_ms"] or {}
        row = [r["target"], f"{r['level']:g}", str(r["completed"]), str(r["errors"])]
        row += [_num(r["request_throughput"], 2), _num(r["output_throughput"])]
        row += [_num(r.get("goodput"), 2)] if goodput else []
        row += [_num(ttft.get("p50")), _num(ttft.get("p95")), _num(tpot.get("p50")), _num(e2e.get("p50"), 0)]
        if ratios is not None:
            c = ratios.get((r["target"], r["level"]))
            if c is None:
                row += ["1.000" if r["target"] == report["targets"][0]["label"] else "—", "", ""]
            else:
                diff = c["ttft_p50_diff_ms"]
                row += [_num(c["output_throughput_ratio"], 3), "—" if diff is None else f"{diff:+.1f}"]
                row += [_num(c["ttft_p50_ratio"], 2)]
        cells.append(row)
    return header, cells


def latency_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per target, level and metric: narrow enough for an 80-column terminal."""
    header = ["target", _level_name(report), "metric", *STATS]
    cells = []
    for r in sorted(report["results"], key=lambda r: r["level"]):
        if r["skipped"] or not r["completed"]:
            continue
        for key, name in METRICS:
            values = r[key] or {}
            cells.append([r["target"], f"{r['level']:g}", name] + [_num(values.get(s)) for s in STATS])
    return header, cells


def _summary_title(report: dict[str, Any]) -> str:
    title = "Throughput: tok/s = output tokens/s; latencies in ms"
    if "comparison" in report:
        title += f"; × and Δ against {report['targets'][0]['label']}"
    return title


def problems(report: dict[str, Any]) -> list[str]:
    lines = []
    for r in report["results"]:
        for message, count in (r.get("error_kinds") or {}).items():
            lines.append(f"{r['target']} at {r['level']:g}: {count} × {message}")
        if r["skipped"]:
            lines.append(f"{r['target']} at {r['level']:g}: {r['skipped']}")
    return lines


def print_report(report: dict[str, Any], console: Console) -> None:
    for title, (header, cells) in (
        (_summary_title(report), summary_rows(report)),
        ("Latency (ms)", latency_rows(report)),
    ):
        table = Table(title=title, title_justify="left", header_style="bold")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
        for row in cells:
            table.add_row(*row)
        console.print(table)
    for line in report.get("notes", []) + [f"{e['name']}: {e['status']}" for e in report.get("engines", [])]:
        console.print(f"· {line}", style="dim", highlight=False, markup=False)
    for line in problems(report):
        console.print(f"! {line}", style="yellow", highlight=False, markup=False)


def to_json(report: dict[str, Any]) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def _html_table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; } code, pre { background: #f6f6f6; padding: 2px 4px; }
img { max-width: 100%; } .warn { color: #a60; }
"""


def render_html(report: dict[str, Any], png: bytes) -> str:
    """One file: tables, the figure as a data URI, and the raw JSON; no external resources."""
    e = html.escape
    settings = report["settings"]
    facts = [
        ("command", f"<code>{e(report['command'])}</code>"),
        ("started", e(report["started_at"])),
        ("machine", e(", ".join(f"{k}: {v}" for k, v in report["machine"].items()))),
        ("workload", e(report["workload"]["description"])),
        ("load", e(f"{report['mode']} levels {', '.join(f'{x:g}' for x in report['levels'])}")),
        ("settings", e(", ".join(f"{k}: {v}" for k, v in settings.items()))),
    ]
    if report.get("slos"):
        facts.append(("SLOs", e(", ".join(f"{k} ≤ {v:g}" for k, v in report["slos"].items()))))
    targets = [
        f"<li><b>{e(t['label'])}</b>: {e(t['dialect'])} at <code>{e(t['url'])}</code>, "
        f"model {e(t['model'])}</li>"
        for t in report["targets"]
    ]
    engines = [f"<li>{e(x['name'])}: {e(x['status'])}</li>" for x in report.get("engines", [])]
    notes = [f"<li>{e(n)}</li>" for n in report.get("notes", [])]
    issues = [f'<li class="warn">{e(p)}</li>' for p in problems(report)]
    image = base64.b64encode(png).decode()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>enginehouse bench</title>",
        f"<style>{_CSS}</style></head><body><h1>enginehouse bench</h1>",
        "<table>" + "".join(f"<tr><th>{k}</th><td style='text-align:left'>{v}</td></tr>" for k, v in facts),
        "</table>",
        f"<h2>Targets</h2><ul>{''.join(targets)}</ul>",
        f"<h2>Engines on this machine</h2><ul>{''.join(engines)}</ul>" if engines else "",
        f'<img alt="throughput and p99 TTFT against load" src="data:image/png;base64,{image}">',
        f"<h2>{e(_summary_title(report))}</h2>",
        _html_table(*summary_rows(report)),
        "<h2>Latency (ms)</h2>",
        _html_table(*latency_rows(report)),
        f"<h2>Errors and skipped targets</h2><ul>{''.join(issues)}</ul>" if issues else "",
        f"<h2>Notes</h2><ul>{''.join(notes)}</ul>" if notes else "",
        "<details><summary>Raw JSON</summary><pre>",
        e(to_json(report).decode()),
        "</pre></details></body></html>\n",
    ]
    return "".join(parts)
