"""A reference SSE parser that follows the WHATWG HTML "event stream interpretation" rules to the letter, and
Hypothesis strategies for event streams. The property tests hold every parser of the project to it.

It reads a whole body at once, so it has no buffering of its own to get wrong: the parsers under test read the
same bytes split into pieces.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from hypothesis import strategies as st

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ReferenceEvent:
    type: str
    data: str
    last_event_id: str


@dataclass
class Parsed:
    events: list[ReferenceEvent]
    retry: int | None  # the last valid ``retry`` field, in milliseconds


def parse(body: bytes) -> Parsed:
    """Every event a conforming client dispatches for ``body``; a final event without its blank line is dropped."""
    text = body.decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = _LINE_END.split(text)
    lines.pop()  # the text after the last line end is not a line: it never ended
    events: list[ReferenceEvent] = []
    data, event_type, last_event_id, retry = "", "", "", None
    for line in lines:
        if line == "":
            if data == "":
                event_type = ""
                continue
            events.append(ReferenceEvent(event_type or "message", data.removesuffix("\n"), last_event_id))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            event_type = value
        elif field == "data":
            data += value + "\n"
        elif field == "id":
            if "\0" not in value:
                last_event_id = value
        elif field == "retry" and value and value.isascii() and value.isdigit():
            retry = int(value)
    return Parsed(events, retry)


# Text for a field's value: anything but the line ends (a value cannot hold them).
VALUE_TEXT = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=12)
FIELD_NAMES = st.sampled_from(["data", "id", "event", "retry", "", "dat", "Data", "data ", "x"])


@st.composite
def field_lines(draw: st.DrawFn) -> str:
    """One line of a stream: a field with or without a colon and space, a comment, or a blank line."""
    kind = draw(st.sampled_from(["field", "field", "field", "bare", "comment", "blank", "retry"]))
    if kind == "blank":
        return ""
    if kind == "comment":
        return ":" + draw(VALUE_TEXT)
    if kind == "retry":
        return "retry:" + draw(st.sampled_from(["", " "])) + draw(st.from_regex(r"[0-9]{0,5}x?", fullmatch=True))
    name = draw(FIELD_NAMES)
    if kind == "bare":
        return name
    return name + ":" + draw(st.sampled_from(["", " ", "  "])) + draw(VALUE_TEXT)


@st.composite
def event_streams(draw: st.DrawFn, line_ends: tuple[str, ...] = ("\n", "\r", "\r\n"), bom: bool = True) -> bytes:
    """Arbitrary lines joined by any mix of ``line_ends``, maybe behind a BOM, maybe ending mid-line."""
    lines = draw(st.lists(field_lines(), max_size=25))
    ends = draw(st.lists(st.sampled_from(line_ends), min_size=len(lines), max_size=len(lines)))
    text = "".join(line + end for line, end in zip(lines, ends, strict=True))
    if draw(st.booleans()):
        text += draw(field_lines())  # an unfinished last line
    if bom and draw(st.integers(0, 9)) == 0:
        text = "\ufeff" + text
    return text.encode()


@st.composite
def splits(draw: st.DrawFn, body: bytes, allow_empty: bool = True) -> list[bytes]:
    """``body`` cut at arbitrary points (inside UTF-8 characters and CRLFs too), maybe with empty pieces."""
    points = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
    if not allow_empty:
        points = sorted(set(points) - {0, len(body)})
    edges = [0, *points, len(body)]
    return [body[start:end] for start, end in itertools.pairwise(edges)]
