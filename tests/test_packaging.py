"""The checkout installs as a package: the Python client is then importable from a script anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import ROOT


def test_the_client_is_importable_anywhere_once_installed(tmp_path: Path) -> None:
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*install, "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=120)
    script = "import service.client as c; print(c.__file__); print(c.ChatClient.__name__)"
    found = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {script}"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    path, name = found.stdout.split()
    assert Path(path).is_relative_to(target)  # the installed copy, not the checkout
    assert name == "ChatClient"
    assert (target / "service" / "static" / "index.html").is_file()
    assert (target / "service" / "static" / "vendor" / "purify.es.js").is_file()  # the page's vendored libraries
