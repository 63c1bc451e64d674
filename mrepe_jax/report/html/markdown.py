"""The subset of markdown that ``report.md`` uses, as HTML (pure: text in, blocks out).

Blocks: ``#``/``##``/``###`` headings, paragraphs, ``- `` lists, pipe tables, and lines that are
only images (``![alt](path)``). Inline: ``code``, **bold**, and links ``[text](href)``. The report
writer (``report.html.document``) turns image blocks into figures; everything else is escaped text."""

from __future__ import annotations

import dataclasses
import html
import re

IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\[([^\]]+)\]\(([^)\s]+)\)")


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str


@dataclasses.dataclass(frozen=True)
class Items:
    items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Image:
    alt: str
    path: str


def _cells(line: str) -> tuple[str, ...]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") else body
    return tuple(c.strip() for c in body.split("|"))


def _is_rule(line: str) -> bool:
    return bool(re.fullmatch(r"\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?", line.strip()))


def parse(text: str) -> list:
    """The report's blocks, in order (``Heading``, ``Paragraph``, ``Items``, ``Table``, ``Image``)."""
    blocks: list = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = [ln for ln in chunk.splitlines() if ln.strip()]
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            if m := re.match(r"^(#{1,6})\s+(.*)$", line):
                blocks.append(Heading(len(m.group(1)), m.group(2)))
                i += 1
            elif m := IMAGE.match(line):
                blocks.append(Image(m.group(1), m.group(2)))
                i += 1
            elif line.startswith("|") and i + 1 < len(lines) and _is_rule(lines[i + 1]):
                headers, rows, i = _cells(line), [], i + 2
                while i < len(lines) and lines[i].strip().startswith("|"):
                    rows.append(_cells(lines[i]))
                    i += 1
                blocks.append(Table(headers, tuple(rows)))
            elif line.startswith("- "):
                items = []
                while i < len(lines) and lines[i].strip().startswith("- "):
                    items.append(lines[i].strip()[2:])
                    i += 1
                blocks.append(Items(tuple(items)))
            else:
                para = []
                while (i < len(lines) and not re.match(r"^(#{1,6}\s|- |!\[)", lines[i].strip())
                       and not (lines[i].strip().startswith("|") and i + 1 < len(lines)
                                and _is_rule(lines[i + 1]))):
                    para.append(lines[i].strip())
                    i += 1
                if para:
                    blocks.append(Paragraph(" ".join(para)))
                else:  # a line the rules above refused (e.g. "![" that is not an image): as text
                    blocks.append(Paragraph(line))
                    i += 1
    return blocks


def inline(text: str) -> str:
    """``text`` escaped, with its ``code``, **bold** and ``[links](href)`` as HTML."""
    out, last = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[last:m.start()]))
        code, bold, label, href = m.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{inline(bold)}</strong>")
        else:
            out.append(f'<a href="{html.escape(href)}">{inline(label)}</a>')
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def slug(text: str) -> str:
    """An id for ``text``: lowercase words joined by ``-`` (``"Table 1: x"`` -> ``table-1-x``)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
