"""HTML building blocks of the report: escaping, tables, sections and the page shell.

Every string that came from a model or a store goes through :func:`esc` (``html.escape``
with quotes), so a layer named ``<script>alert(1)</script>`` renders as text. The page is one
file with its CSS and a small inline script; it loads nothing from the network.

The inline script records JavaScript errors and images that fail to decode into
``<pre id="vs-errors">`` and sets ``data-status`` on ``<html>`` ("ok" or "errors") once the
page has loaded, so a headless browser's ``--dump-dom`` shows whether the page rendered cleanly.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def esc(value: object) -> str:
    """``str(value)`` escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Section:
    """One report section: ``anchor`` is its id (``[a-z-]`` only), ``body`` is trusted HTML."""

    anchor: str
    title: str
    body: str


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], css_class: str = "") -> str:
    """An HTML table; every header and cell is escaped (cells wrapped in :class:`Raw` are not)."""
    head = "".join(f"<th>{esc(header)}</th>" for header in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    class_attribute = f' class="{esc(css_class)}"' if css_class else ""
    return f"<table{class_attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass(frozen=True)
class Raw:
    """Trusted HTML for a table cell (built by this module from escaped parts)."""

    html: str


def _cell(cell: object) -> str:
    return cell.html if isinstance(cell, Raw) else esc(cell)


def figure(data_uri: str, caption: str) -> str:
    """An inlined figure (``data_uri`` from :func:`vitalstats.report.plots.to_data_uri`)."""
    if not data_uri.startswith("data:image/"):
        raise ValueError("a report figure must be an inlined data: URI, not an external file")
    return (
        f'<figure><img src="{esc(data_uri)}" alt="{esc(caption)}" loading="eager">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def grid(figures_html: str) -> str:
    """Figures side by side (as many columns as the window fits)."""
    return f'<div class="grid">{figures_html}</div>' if figures_html else ""


def note(text: str) -> str:
    """A muted paragraph, e.g. why a section has nothing to show."""
    return f'<p class="note">{esc(text)}</p>'


def badge(severity: str) -> str:
    known = severity.lower() if severity.lower() in {"error", "warning", "info"} else "other"
    return f'<span class="badge {known}">{esc(severity)}</span>'


_STYLE = """
:root { --fg:#1f2933; --muted:#616e7c; --line:#d9e2ec; --accent:#2c3e50; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       margin: 0; background: #f5f7fa; }
header { background: var(--accent); color: #fff; padding: 16px 32px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 4px 0 0; color: #cbd2d9; }
nav { padding: 8px 32px; background: #fff; border-bottom: 1px solid var(--line);
      position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; font-size: 13px; }
main { padding: 8px 32px 48px; max-width: 1500px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px;
          padding: 8px 20px 16px; margin: 16px 0; }
section h2 { font-size: 17px; margin: 8px 0; }
section h3 { font-size: 14px; margin: 14px 0 4px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left;
         vertical-align: top; }
th { background: #f0f4f8; }
td code, td pre { font-size: 12px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; }
figure { margin: 8px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 4px 16px; }
figure img { max-width: 100%; height: auto; }
figcaption, .note { color: var(--muted); font-size: 12px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 11px;
         font-weight: 600; text-transform: uppercase; color: #fff; background: #7b8794; }
.badge.error { background: #c0392b; } .badge.warning { background: #d68910; }
.badge.info { background: #2471a3; }
.fix { color: #1e8449; }
tr.consequence td { background: #fafbfc; }
tr.consequence td:nth-child(3) { padding-left: 28px; }
.explains { display: block; color: var(--muted); font-size: 11px; }
#vs-errors { display: none; color: #c0392b; }
html[data-status="errors"] #vs-errors { display: block; }
"""

# Collects uncaught errors, console.error calls and broken images; marks the page when loaded.
_SCRIPT = """
(function () {
  var errors = [];
  function record(text) {
    errors.push(String(text));
    var box = document.getElementById("vs-errors");
    if (box) { box.textContent = errors.join("\\n"); }
    document.documentElement.setAttribute("data-status", "errors");
  }
  window.addEventListener("error", function (event) {
    if (event.target && event.target.tagName === "IMG") {
      record("image failed to load: " + (event.target.alt || "?"));
    } else {
      record("script error: " + event.message);
    }
  }, true);
  var consoleError = console.error;
  console.error = function () {
    record("console.error: " + Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var images = document.images, drawn = 0;
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) { drawn++; }
      else { record("image not drawn: " + (images[i].alt || "?")); }
    }
    var root = document.documentElement;
    root.setAttribute("data-images-drawn", String(drawn));
    root.setAttribute("data-sections", String(document.querySelectorAll("main > section").length));
    if (!errors.length) { root.setAttribute("data-status", "ok"); }
  });
})();
"""


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole self-contained document."""
    links = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en" data-status="loading"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head>"
        f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<nav>{links}</nav><main>"
        '<pre id="vs-errors" role="alert"></pre>'
        f"{body}</main></body></html>\n"
    )
