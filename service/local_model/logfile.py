"""The local model server's log file: kept small, the previous run's kept beside it, its tail read on failure."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
_TAIL_BYTES = 4096


class ServerLog:
    """A file the child appends to. Without a ``path`` a temporary one, removed by ``remove()``."""

    def __init__(self, path: Path | None = None, max_bytes: int = 10 * 1024 * 1024) -> None:
        self.owned = path is None
        if path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            path = Path(name)
        self.path = path
        self.max_bytes = max_bytes

    @property
    def previous(self) -> Path:
        return self.path.with_name(self.path.name + ".1")

    def rotate(self) -> None:
        """Keep the previous run's log (the crash reason) as ``<log>.1``."""
        try:
            if self.path.stat().st_size > 0:
                self.path.replace(self.previous)
        except FileNotFoundError:
            pass

    def trim(self) -> None:
        """Cap the log: copy it to ``<log>.1`` and truncate (the child appends)."""
        try:
            if self.path.stat().st_size > self.max_bytes:
                shutil.copyfile(self.path, self.previous)
                os.truncate(self.path, 0)
        except OSError:
            log.debug("could not trim %s", self.path, exc_info=True)

    def tail(self, lines: int = 25) -> str:
        """The last lines the child wrote."""
        try:
            with self.path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _TAIL_BYTES))
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def remove(self) -> None:
        """Delete the files if this object made them."""
        if self.owned:
            for path in (self.path, self.previous):
                path.unlink(missing_ok=True)
