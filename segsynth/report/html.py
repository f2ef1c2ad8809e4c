"""A minimal HTML page builder for one self-contained report file.

Every piece of text goes through :func:`html.escape`, images are embedded as ``data:`` URIs, the
style sheet is inline and links point only at anchors inside the page, so the file can be mailed,
archived or opened offline and shows the same thing everywhere.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

STYLE = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 0; color: #1d2733; background: #f6f7f9; }
header { background: #1d2733; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; color: #c7d0da; font-size: 13px; }
nav { padding: 8px 32px; background: #e8ecf1; font-size: 14px; }
nav a { margin-right: 16px; color: #1f5fa8; text-decoration: none; }
main { padding: 8px 32px 40px 32px; max-width: 1400px; }
section { background: #fff; border: 1px solid #dde3ea; border-radius: 6px; padding: 12px 20px; margin: 18px 0; }
h2 { font-size: 19px; border-bottom: 2px solid #1f5fa8; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px 0; }
p.note, p.empty { color: #5b6875; font-size: 13px; }
p.empty { font-style: italic; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px 0; }
th, td { border: 1px solid #d5dce4; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #eef2f6; }
td:first-child, th:first-child { text-align: left; }
td.text, th.text { text-align: left; max-width: 520px; }
figure { margin: 8px 0 16px 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: flex-start; }
.gallery figure { max-width: 540px; }
figure img { max-width: 100%; border: 1px solid #dde3ea; image-rendering: pixelated; }
figcaption { font-size: 12px; color: #5b6875; margin-top: 2px; }
pre { background: #f3f5f8; border: 1px solid #dde3ea; padding: 8px; font-size: 12px; overflow-x: auto; }
details { margin: 6px 0; }
summary { cursor: pointer; font-size: 13px; }
.tag { display: inline-block; padding: 1px 6px; border-radius: 3px; font-size: 12px; }
.human { background: #d9f2dd; color: #185c26; }
.derived { background: #fbe7c6; color: #7a4b00; }
.path { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; color: #44505c; }
"""


def esc(value: object) -> str:
    """``value`` as text safe inside HTML elements and attribute values."""
    return html.escape(str(value), quote=True)


@dataclass
class Raw:
    """Markup built by this module (already escaped); anything else given to a builder is text."""

    markup: str


def _cell(value: object) -> str:
    if isinstance(value, Raw):
        return value.markup
    return esc(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], text_columns: Sequence[int] = ()) -> Raw:
    """A table; cells are escaped unless they are :class:`Raw`. ``text_columns`` are left-aligned."""
    head = "".join(f'<th class="text">{esc(h)}</th>' if i in text_columns else f"<th>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="text">{_cell(v)}</td>' if i in text_columns else f"<td>{_cell(v)}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def image(png: bytes, alt: str, caption: str | None = None, width: int | None = None) -> Raw:
    """A PNG embedded as a ``data:`` URI inside a figure."""
    data = base64.b64encode(png).decode("ascii")
    style = f' style="width:{int(width)}px"' if width else ""
    caption_html = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Raw(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}"{style}>{caption_html}</figure>')


def gallery(parts: Sequence[Raw]) -> Raw:
    """Figures side by side, wrapping to the page width."""
    return Raw(f'<div class="gallery">{"".join(p.markup for p in parts)}</div>')


def paragraph(text: str, css: str = "note") -> Raw:
    return Raw(f'<p class="{esc(css)}">{esc(text)}</p>')


def heading(text: str) -> Raw:
    return Raw(f"<h3>{esc(text)}</h3>")


def preformatted(text: str, summary: str | None = None) -> Raw:
    """Text in a ``<pre>``; with ``summary``, folded in a ``<details>`` element."""
    block = f"<pre>{esc(text)}</pre>"
    return Raw(f"<details><summary>{esc(summary)}</summary>{block}</details>" if summary else block)


def tag(text: str, css: str) -> Raw:
    return Raw(f'<span class="tag {esc(css)}">{esc(text)}</span>')


def path_text(text: str) -> Raw:
    return Raw(f'<span class="path">{esc(text)}</span>')


@dataclass
class Section:
    """One titled part of the page, with an anchor ``id``."""

    id: str
    title: str
    parts: list[Raw] = field(default_factory=list)

    def add(self, *parts: Raw) -> None:
        self.parts.extend(parts)

    def render(self, empty: str) -> str:
        body = "".join(p.markup for p in self.parts) or paragraph(empty, "empty").markup
        return f'<section id="{esc(self.id)}"><h2>{esc(self.title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[Section, str]]) -> str:
    """The whole document: header, in-page navigation, then each ``(section, text if empty)``."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s, _ in sections)
    body = "".join(s.render(empty) for s, empty in sections)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
