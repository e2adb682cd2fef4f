"""report.html: one self-contained file (plots embedded as data URIs, CSS inline) that reads on a phone
and on a wide screen. The sections are the Markdown of report.md, rendered one by one, so the verdict
gets an element of its own (id "verdict") ahead of every table and plot.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

CSS = """
:root { color-scheme: light; }
body { margin: 0 auto; padding: 1rem; max-width: 72rem; font: 16px/1.5 system-ui, -apple-system, "Segoe UI",
       Roboto, sans-serif; color: #1a1a1a; background: #fff; }
h1 { font-size: 1.6rem; margin: 0.5rem 0 1rem; }
h2 { font-size: 1.3rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.1rem; }
#verdict { border: 2px solid #333; border-radius: 6px; padding: 0.25rem 1rem; background: #f4f4f4; }
#verdict h2 { margin-top: 0.5rem; border: 0; }
#verdict li { margin: 0.4rem 0; }
p, li { overflow-wrap: anywhere; }
code { font-size: 0.92em; background: #eee; padding: 0 0.2em; border-radius: 3px; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: 0.5rem 0 1rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #999; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #e8e8e8; }
td:first-child, th:first-child { text-align: left; }
img { display: block; max-width: 100%; height: auto; margin: 0.5rem 0 1.5rem; }
@media (max-width: 40rem) { body { padding: 0.5rem; font-size: 15px; } h1 { font-size: 1.3rem; } }
"""

_IMG = re.compile(r'<img alt="([^"]*)" src="([^":/]+\.png)"\s*/?>')


def _embed(body: str, folder: Path) -> str:
    """Each <img src="name.png"> of the folder as a data URI: the page needs no file beside it."""
    def data_uri(m: re.Match) -> str:
        data = base64.b64encode((folder / m.group(2)).read_bytes()).decode("ascii")
        return f'<img alt="{m.group(1)}" src="data:image/png;base64,{data}">'
    return _IMG.sub(data_uri, body)


def _scrolling(body: str) -> str:
    """Wide tables scroll sideways on a narrow screen instead of widening the page."""
    return body.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")


def render(title: str, sections: list[tuple[str, str]], folder: Path) -> str:
    """The page: `sections` are (element id, Markdown) in order; images are PNGs in `folder`."""
    parts = []
    for ident, text in sections:
        body = _scrolling(_embed(markdown.markdown(text, extensions=["tables"]), folder))
        parts.append(f'<section id="{html.escape(ident)}">\n{body}\n</section>')
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
