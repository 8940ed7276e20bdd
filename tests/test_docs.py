"""The documents stand alone: their links resolve inside the repository, nothing points at files beside it, and
the protocol document names every error code the service can produce."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from service.errors import ServiceError

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"

# Built from parts so that this file does not match itself.
FORBIDDEN = tuple(
    "".join(parts) for parts in (("..", "/shared"), ("WIRE", ".md"), ("DESIGN", ".md"), ("DEVELOPERS", ".md"))
)

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
_EXTERNAL = re.compile(r"^(https?|mailto):", re.IGNORECASE)


def markdown_targets(text: str) -> list[str]:
    """Every link and image target of ``text`` (inline and reference style), outside code blocks and spans."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    found = [match.group(1) for pattern in (_INLINE_LINK, _REFERENCE) for match in pattern.finditer(text)]
    return [target.removeprefix("<").removesuffix(">") for target in found]


def broken_links(document: Path, root: Path) -> list[str]:
    """The relative targets of ``document`` that are missing or resolve outside ``root``."""
    problems = []
    for target in markdown_targets(document.read_text(encoding="utf-8")):
        path = unquote(target.partition("#")[0])
        if _EXTERNAL.match(target) or not path:  # a web or mail address, or an anchor in this document
            continue
        base = root if path.startswith("/") else document.parent
        resolved = (base / path.lstrip("/")).resolve()
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{document.relative_to(root)}: {target} leads outside the repository")
        elif not resolved.exists():
            problems.append(f"{document.relative_to(root)}: {target} does not exist")
    return problems


def forbidden_references(name: str, text: str) -> list[str]:
    return [
        f"{name}:{number}: {word}"
        for number, line in enumerate(text.splitlines(), 1)
        for word in FORBIDDEN
        if word in line
    ]


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def repository_text_files() -> Iterator[tuple[str, str]]:
    """(path, text) of every file git tracks or would add, binary files left out."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in sorted(set(listed.decode().split("\0")) - {""}):
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        yield name, data.decode("utf-8", errors="replace")


def error_codes() -> set[str]:
    codes: set[str] = set()
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return codes


def test_links_in_readme_and_docs_resolve_inside_the_repository() -> None:
    found = documents()
    assert PROTOCOL in found and (ROOT / "README.md").is_file()
    problems = [problem for document in found for problem in broken_links(document, ROOT)]
    assert not problems, "\n".join(problems)


def test_no_file_refers_to_documents_outside_the_repository() -> None:
    files = dict(repository_text_files())
    assert "README.md" in files and "service/errors.py" in files
    problems = [problem for name, text in files.items() for problem in forbidden_references(name, text)]
    assert not problems, "\n".join(problems)


def test_protocol_document_names_every_error_code() -> None:
    codes = error_codes()
    assert {"validation_error", "context_too_long", "upstream_rejected", "idle_timeout", "internal"} <= codes
    text = PROTOCOL.read_text(encoding="utf-8")
    missing = sorted(code for code in codes if f"`{code}`" not in text)
    assert not missing, f"docs/protocol.md does not name: {', '.join(missing)}"


def test_the_link_check_catches_missing_and_escaping_targets(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "here.md").write_text("x")
    (tmp_path / "outside.md").write_text("x")
    document = root / "docs" / "page.md"
    document.write_text(
        "[ok](here.md#part) [ok](/docs/here.md) ![ok](<here.md>) [web](https://example.com/x) [mail](mailto:a@b.c)\n"
        "[anchor](#top) `[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](missing.md) ![escape](../../outside.md)\n[ref]: ../../outside.md#x\n"
    )
    assert broken_links(document, root) == [
        "docs/page.md: missing.md does not exist",
        "docs/page.md: ../../outside.md leads outside the repository",
        "docs/page.md: ../../outside.md#x leads outside the repository",
    ]


def test_the_reference_check_catches_each_forbidden_name() -> None:
    text = "\n".join(f"see {word} for more" for word in FORBIDDEN) + "\nsee docs/protocol.md\n"
    assert forbidden_references("a.md", text) == [f"a.md:{n}: {word}" for n, word in enumerate(FORBIDDEN, 1)]
