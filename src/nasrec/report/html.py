"""The report's self-contained HTML page, made from its Markdown."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

_INLINE = re.compile(
    r"`(?P<code>[^`]+)`"  # code span
    r"|\*\*(?P<bold>[^*]+?)\*\*"  # bold
    r"|(?<![\w*])\*(?P<em>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"  # italics
    r"|!?\[(?P<link>[^\]]+)\]\((?P<url>[^)\s]+)\)"  # link
)


def _inline(text: str) -> str:
    """HTML of one line of Markdown inline markup: code spans, bold, italics and links; the rest escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos : m.start()]))
        if m["code"] is not None:
            out.append(f"<code>{html.escape(m['code'])}</code>")
        elif m["bold"] is not None:
            out.append(f"<strong>{_inline(m['bold'])}</strong>")
        elif m["em"] is not None:
            out.append(f"<em>{_inline(m['em'])}</em>")
        else:
            out.append(f'<a href="{html.escape(m["url"])}">{_inline(m["link"])}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _image(src: str, alt: str, images: dict[str, Path], diagram: dict[str, Any]) -> str:
    """An image of the report as an inline element: a PNG as a data URI, the Graphviz SVG inline."""
    if src == "architecture.svg" and "svg" in diagram:
        svg = diagram["svg"]
        return f'<div class="diagram" role="img" aria-label="{html.escape(alt)}">{svg[svg.find("<svg") :]}</div>'
    if src in images:
        data = base64.b64encode(images[src].read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
    return f"<p>{html.escape(alt)} (image missing)</p>"


def _html(name: str, md: list[str], plots: list[tuple[str, Path]], diagram: dict[str, Any]) -> str:
    """A self-contained page from the report's Markdown: headings, paragraphs, tables, code and images.

    Only the Markdown this module writes is handled: `#`/`##` headings, paragraphs (consecutive lines are
    one paragraph), pipe tables, fenced blocks (a `mermaid` block is left out: the diagram is drawn as an
    image), images on their own line, and the inline markup of `_inline`.
    """
    body: list[str] = []
    table: list[str] = []
    para: list[str] = []
    images = {p.name: p for _, p in plots}
    if isinstance(diagram.get("image"), Path):
        images[diagram["image"].name] = diagram["image"]
    code: list[str] | None = None
    lang = ""

    def flush() -> None:
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table.clear()
        if para:
            body.append(f"<p>{' '.join(_inline(x) for x in para)}</p>")
            para.clear()

    for line in md:
        if code is not None:
            if line.startswith("```"):
                if lang != "mermaid":
                    body.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            flush()
            code, lang = [], line[3:].strip()
            continue
        if line.startswith("|"):
            if para:
                flush()
            if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if table or not line:
            flush()
        if not line:
            continue
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif (m := re.fullmatch(r"!\[([^\]]*)\]\(([^)\s]+)\)", line.strip())) is not None:
            flush()
            body.append(_image(m[2], m[1], images, diagram))
        else:
            para.append(line)
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}.diagram svg{max-width:100%;height:auto}"
        "code{background:#f3f3f3;padding:0 3px;border-radius:3px}pre{background:#f6f6f6;padding:8px;"
        "overflow-x:auto}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>nasrec report: {html.escape(name)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
