"""The reply of a running turn, token by token, kept compactly.

Why: a stream keeps every token it relayed (the save at the end, and replays by ``Last-Event-ID`` re-framed with
the same token boundaries), and a worker holds thousands of streams. A ``list[str]`` costs a 50-byte ``str``
object and an 8-byte slot per token; here a token costs its UTF-8 bytes plus a 4-byte end offset (S2's
100-token replies: ~6.4 KB → ~1 KB a stream).

A reasoning model's thinking is kept in the same sequence (it is numbered with the tokens on the wire): a reply
that has some gets one more byte per piece saying which pieces are reasoning; one that has none, nothing.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from service.chat.events import Reasoning, Token
from service.llm.streaming import ReasoningText


class ReplyParts:
    """Append-only pieces: ``extend`` a batch, ``len`` counts pieces, ``[i]`` is piece ``i``, ``text()`` the answer,
    ``reasoning()`` the thinking (``ReasoningText`` pieces), ``event(i)`` piece ``i`` as its stream event."""

    __slots__ = ("_ends", "_reasoning", "_text")

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self._text = bytearray()
        self._ends = array("I")
        self._reasoning: bytearray | None = None  # one byte a piece (1: reasoning), once a reasoning piece came
        self.extend(tokens)

    def extend(self, tokens: Iterable[str]) -> None:
        """Append answer text (the pieces' class is not looked at: see ``extend_mixed``)."""
        text, ends = self._text, self._ends
        for token in tokens:
            text += token.encode()
            ends.append(len(text))
        if self._reasoning is not None:
            self._reasoning.extend(bytes(len(ends) - len(self._reasoning)))

    def extend_mixed(self, pieces: Iterable[str]) -> None:
        """Append pieces some of which may be ``ReasoningText``."""
        text, ends = self._text, self._ends
        kinds = self._reasoning
        if kinds is None:
            kinds = self._reasoning = bytearray(len(ends))
        for piece in pieces:
            text += piece.encode()
            ends.append(len(text))
            kinds.append(piece.__class__ is ReasoningText)

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

    def event(self, index: int) -> Token | Reasoning:
        """Piece ``index`` as the event that carried it."""
        kinds = self._reasoning
        if kinds is not None and kinds[index]:
            return Reasoning(self[index])
        return Token(self[index])

    def text(self) -> str:
        """The answer: every piece that is not reasoning."""
        if self._reasoning is None:
            return self._text.decode()
        return self._joined(0)

    def reasoning(self) -> str | None:
        """The reasoning, or None when the reply had none."""
        if self._reasoning is None or not any(self._reasoning):
            return None
        return self._joined(1)

    def _joined(self, kind: int) -> str:
        text, ends, kinds = self._text, self._ends, self._reasoning
        assert kinds is not None
        out = bytearray()
        start = 0
        for index, end in enumerate(ends):
            if kinds[index] == kind:
                out += text[start:end]
            start = end
        return out.decode()
