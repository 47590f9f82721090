"""worker-sdk/README.md names every option of `wsq-worker` and of `wsq-worker dead`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from wsq_worker.cli import build_dead_parser, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _paragraph(opening: str) -> str:
    text = README.read_text()
    start = text.index(opening)
    end = text.find("\n\n", start)
    return text[start : end if end >= 0 else len(text)]


def _options(parser: argparse.ArgumentParser) -> set[str]:
    found = {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in {"--help", "--version"}
    }
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def test_readme_names_every_worker_option() -> None:
    paragraph = _paragraph("`wsq-worker --help` lists the command's options")
    head = paragraph.split("`wsq-worker dead --help`", 1)[0]
    assert set(re.findall(r"`(--[a-z-]+)`", head)) == _options(build_parser())


def test_readme_names_every_dead_letter_option() -> None:
    paragraph = _paragraph("`wsq-worker --help` lists the command's options")
    tail = paragraph.split("`wsq-worker dead --help`", 1)[1]
    assert set(re.findall(r"`(--[a-z-]+)`", tail)) == _options(build_dead_parser())
    subcommands = next(a for a in build_dead_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(re.findall(r"`([a-z]+)`", tail)) == set(subcommands.choices)
    assert "`SHARD:ID`" in tail


def test_top_level_readme_shows_every_dead_letter_option() -> None:
    text = (README.parents[1] / "README.md").read_text()
    start = text.index("### Retries and dead letters")
    section = text[start : text.index("\n## ", start)]
    for option in _options(build_dead_parser()):
        assert option in section, option
    assert "SHARD:ID" in section
    assert "(worker-sdk/README.md#delivery-guarantees)" in section
