"""Shared by the bench scripts: replace (or append) one delimited section of BENCHMARKS.md."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["write_section"]


def write_section(path: Path, section: str, name: str) -> None:
    """Put ``section`` between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in ``path``, keeping the rest."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{section}{end}\n"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block
    path.write_text(text)
