"""Where the language-neutral files of ``protocol/`` are: ``keys.json``, ``lua/``, ``schemas/``.

An installed wheel carries them under ``wsq_protocol/data/``; a source checkout (an editable
install, the tests) reads them from ``protocol/`` itself, so there is one copy of each.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any


@functools.cache
def data_root() -> Traversable:
    """The folder holding ``keys.json``, ``lua/`` and ``schemas/``."""
    packaged = resources.files(__package__) / "data"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2]  # protocol/, in a source checkout


def read_text(*parts: str) -> str:
    """The text of a file under the data root, e.g. ``read_text("lua", "forget.lua")``."""
    node = data_root()
    for part in parts:
        node = node / part
    return node.read_text(encoding="utf-8")


@functools.cache
def keys_document() -> dict[str, Any]:
    """``keys.json``, parsed."""
    doc: dict[str, Any] = json.loads(read_text("keys.json"))
    return doc
