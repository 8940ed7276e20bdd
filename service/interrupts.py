"""The one exception thrown across layers: below everything, so both the reader that catches it (``llm``) and the
relay that throws it can import it."""

from __future__ import annotations


class WakeUp(Exception):
    """Thrown into a greenlet blocked in a body reader's ``recv``: ``read`` returns ``b""`` at once, and the next
    ``read`` goes on where it was. This is how a stream's heartbeat reaches the greenlet that waits on a silent
    model."""
