"""The reply of a running turn, token by token, kept compactly.

Why: a stream keeps every token it relayed (the save at the end, and replays by ``Last-Event-ID`` re-framed with
the same token boundaries), and a worker holds thousands of streams. A ``list[str]`` costs a 50-byte ``str``
object and an 8-byte slot per token; here a token costs its UTF-8 bytes plus a 4-byte end offset (S2's
100-token replies: ~6.4 KB → ~1 KB a stream).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable


class ReplyParts:
    """Append-only tokens: ``extend`` a batch, ``len`` counts tokens, ``[i]`` is token ``i``, ``text()`` all."""

    __slots__ = ("_ends", "_text")

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self._text = bytearray()
        self._ends = array("I")
        self.extend(tokens)

    def extend(self, tokens: Iterable[str]) -> None:
        text, ends = self._text, self._ends
        for token in tokens:
            text += token.encode()
            ends.append(len(text))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        ends = self._ends
        if index < 0:
            index += len(ends)
        if not 0 <= index < len(ends):
            raise IndexError("reply token index out of range")
        start = ends[index - 1] if index else 0
        return self._text[start : ends[index]].decode()

    def text(self) -> str:
        return self._text.decode()
