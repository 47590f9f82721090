"""Every error code and close code of codes.py is documented: in protocol/README.md's tables
(the complete contract) and in the top-level README's summary of them."""

from __future__ import annotations

import re
from pathlib import Path

from wsq_protocol.codes import ERROR_CODES, CloseCode, is_application_close_code

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL_README = ROOT / "protocol" / "README.md"
README = ROOT / "README.md"


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a markdown heading line), up to the next heading."""
    start = text.index(f"{heading}\n")
    found = re.search(r"^#", text[start + len(heading) + 1 :], re.MULTILINE)
    end = start + len(heading) + 1 + found.start() if found else len(text)
    return text[start:end]


def _first_column(section: str) -> list[str]:
    return re.findall(r"^\| ([^|]+?) \|", section, re.MULTILINE)[2:]  # after the header and its rule


def _paragraph(text: str, opening: str) -> str:
    start = text.index(opening)
    end = text.find("\n\n", start)
    return text[start : end if end >= 0 else len(text)]


def test_protocol_readme_lists_every_error_code() -> None:
    codes = _first_column(_section(PROTOCOL_README.read_text(), "### Error codes"))
    assert len(codes) == len(set(codes))
    assert {code.strip("`") for code in codes} == ERROR_CODES


def test_protocol_readme_lists_every_close_code() -> None:
    rows = _first_column(_section(PROTOCOL_README.read_text(), "### Close codes"))
    documented = {int(row) for row in rows if row.isdigit()}
    assert {int(code) for code in CloseCode} <= documented
    ranges = [row for row in rows if not row.isdigit()]
    assert ranges == ["3000–4999"]  # the application's: is_application_close_code
    assert is_application_close_code(3000)
    assert is_application_close_code(4999)
    assert not is_application_close_code(2999)
    assert not is_application_close_code(5000)


def test_readme_names_every_error_code() -> None:
    paragraph = _paragraph(README.read_text(), "Every bad input gets an `$error`")
    gateway_part, worker_part = paragraph.split("workers send", 1)
    gateway = set(re.findall(r"`([a-z][a-z_]*)`", gateway_part))
    worker = set(re.findall(r"`([a-z][a-z_]*)`", worker_part))
    assert gateway | worker == ERROR_CODES
    # who sends which, as protocol/README.md's table says
    rows = re.findall(r"^\| `([a-z_]+)` \| (gateway|worker) \|", PROTOCOL_README.read_text(), re.MULTILINE)
    assert gateway == {code for code, sender in rows if sender == "gateway"}
    assert worker == {code for code, sender in rows if sender == "worker"}
    assert "(protocol/README.md#error-codes)" in paragraph


def test_readme_names_every_close_code_the_gateway_sends() -> None:
    paragraph = _paragraph(README.read_text(), "A gateway closes sockets with these codes:")
    listed = {int(n) for n in re.findall(r"(?<![–\d])(\d{4})(?![–\d])", paragraph.split(":", 1)[1])}
    sent = {int(code) for code in CloseCode} - {CloseCode.ABNORMAL_CLOSURE}  # 1006 is never sent
    assert listed == sent
    assert "3000–4999" in paragraph
    assert "(protocol/README.md#close-codes)" in paragraph
