"""The report page: one self-contained HTML file (figures embedded as base64 PNG, no network).

:func:`render_html` turns the report's results dict (what results.json holds) into the page;
:func:`format_table` renders rows of scalars; a result without its own ``table()`` gets
generic tables of its ``to_dict()``.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["render_html", "format_table"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em;display:block;overflow-x:auto;
max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8em;color:#555}.what{color:#444}.skip{color:#8a4b00}
code{background:#f5f5f5;padding:0 .2em}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, str) and "/" in v and len(v) > 30:
        return "…/" + "/".join(Path(v).parts[-2:])  # run paths: the part that tells them apart
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def format_table(rows: Sequence[Mapping], *, limit: int = 60) -> str:
    """An HTML table of ``rows`` (dicts with the same keys, scalars as values)."""
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = []
    for r in rows[:limit]:
        body.append("<tr>" + "".join(f"<td>{_esc(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>")
    more = (f"<tr><td colspan='{len(cols)}'>… {len(rows) - limit} more rows in results.json"
            "</td></tr>") if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{''.join(body)}{more}</table>"


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _generic_tables(obj, title: str = "", depth: int = 0) -> str:
    """Tables for a result's ``to_dict()`` whatever its shape: top-level scalars as key/value
    rows, lists of flat dicts as tables, nested dicts one level down; long numeric lists (curves)
    are left to the figures."""
    if not isinstance(obj, Mapping) or depth > 2:
        return ""
    parts = []
    scalars = [{"quantity": k, "value": v} for k, v in obj.items()
               if _is_scalar(v) and not (isinstance(v, str) and len(v) > 200)]
    if scalars:
        parts.append(format_table(scalars))
    for k, v in obj.items():
        if isinstance(v, list) and v and all(isinstance(r, Mapping) for r in v):
            rows = [{kk: vv for kk, vv in r.items() if _is_scalar(vv)} for r in v]
            if any(rows):
                parts.append(f"<h4>{_esc(k)}</h4>" + format_table(rows))
        elif isinstance(v, Mapping) and v:
            inner = _generic_tables(v, k, depth + 1)
            if inner:
                parts.append(f"<h4>{_esc(title + ' / ' if title else '')}{_esc(k)}</h4>{inner}")
    return "".join(parts)


def _img(path: Path, alt: str) -> str:
    raw = path.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    # figures are saved at 200 dpi: show them at half their pixel width (about 100 dpi)
    width = int.from_bytes(raw[16:20], "big") // 2 if raw[:8] == b"\x89PNG\r\n\x1a\n" else 0
    size = f" width='{width}'" if width else ""
    return (f"<figure><img alt='{_esc(alt)}'{size} src='data:image/png;base64,{data}'>"
            f"<figcaption>{_esc(path.name)} (PDF next to it)</figcaption></figure>")


def _header(report: Mapping) -> list[str]:
    runs = report["runs"]
    return [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>gauge report</title><style>{_CSS}</style></head><body>",
            "<h1>gauge-tickets report</h1>",
            f"<p>{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}; primary group "
            f"<b>{_esc(report['primary_group'])}</b>; levels common to its runs: "
            f"{_esc(report['common_levels'])}. Every number is in "
            "<code>results.json</code>; every figure is in <code>figures/</code> as PNG and "
            "PDF.</p>",
            format_table([{"run": r["path"], "seed": r["seed"], "configuration": r["group"],
                           "model": r["arch"], "levels": len(r["levels"]),
                           "controls": ", ".join(f"{k} ({len(v)})"
                                                 for k, v in r["controls"].items()) or "-"}
                          for r in runs])]


def _skipped(skipped: Sequence[Mapping]) -> list[str]:
    parts = ["<h2 id='skipped'>Skipped analyses and notes</h2>"]
    if skipped:
        parts.append("<ul class='skip'>" + "".join(
            f"<li><b>{_esc(s['analysis'])}</b>: {_esc(s['reason'])}</li>" for s in skipped)
            + "</ul>")
    else:
        parts.append("<p>None: every analysis ran.</p>")
    return parts


def _section(name: str, title: str, what: str, value, figures: Sequence[str], out_dir: Path,
             rows: Sequence[Mapping] | None) -> list[str]:
    """One analysis: heading, explanation, figures, its settings and its table."""
    parts = [f"<h2 id='{_esc(name)}'>{_esc(title)}</h2><p class='what'>{_esc(what)}</p>"]
    for rel in figures:
        p = out_dir / rel if not Path(rel).is_absolute() else Path(rel)
        if p.suffix.lower() == ".png" and p.is_file():
            parts.append(_img(p, f"{title}: {p.stem}"))
    if not rows:
        parts.append(_generic_tables(value))
        return parts
    settings = {k: v for k, v in value.items() if _is_scalar(v) and
                not (isinstance(v, str) and ("/" in v or len(v) > 60))}
    if settings:
        parts.append("<p class='what'>" + ", ".join(
            f"{_esc(k)} = <code>{_esc(_fmt(v))}</code>" for k, v in settings.items()) + "</p>")
    parts.append(format_table(rows))
    return parts


def render_html(report: Mapping, out_dir: Path, *, analyses: Sequence,
                tables: Mapping | None = None) -> str:
    """The self-contained report page: every PNG embedded as base64, no external resource.

    ``report``: the results dict; ``analyses``: the report's analyses in page order (each with
    ``name``, ``title``, ``what``); ``tables``: name -> rows of the analysis' ``table()``.
    """
    tables = tables or {}
    parts = _header(report) + _skipped(report["skipped"])
    for a in analyses:
        if a.name in report["analyses"]:
            parts += _section(a.name, a.title, a.what, report["analyses"][a.name],
                              report["figures"].get(a.name, []), Path(out_dir),
                              tables.get(a.name))
    parts.append("</body></html>")
    return "\n".join(parts)
