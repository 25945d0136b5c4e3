"""HTML building blocks: escaping, tables, figures and the page shell."""

from __future__ import annotations

import pytest

from vitalstats.report.html import Raw, Section, esc, figure, page, table


def test_esc_escapes_markup_and_quotes():
    assert esc('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"


def test_table_escapes_cells_unless_raw():
    html = table(["<h>"], [["<td>"], [Raw("<b>ok</b>")]])
    assert "&lt;h&gt;" in html and "&lt;td&gt;" in html and "<b>ok</b>" in html


def test_figure_accepts_only_inlined_images():
    assert '<img src="data:image/svg+xml;base64,AA=="' in figure(
        "data:image/svg+xml;base64,AA==", "c"
    )
    with pytest.raises(ValueError, match="inlined data: URI"):
        figure("https://example.com/x.svg", "c")


def test_page_escapes_titles_and_anchors():
    html = page("<t>", "<s>", [Section("sec", "<h2>", "<p>trusted</p>")])
    assert "<title>&lt;t&gt;</title>" in html
    assert '<a href="#sec">&lt;h2&gt;</a>' in html
    assert "<p>trusted</p>" in html
    assert html.count("<script>") == 1
