"""The README's examples run as written: a newcomer copies them, so they are tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_block_under(heading: str) -> str:
    """The first ```python block after ``heading`` (a line of the README), before the next
    heading of the same level."""
    text = README.read_text()
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n")
    end = text.find(f"\n{level} ", start + len(heading) + 2)
    section = text[start : end if end >= 0 else len(text)]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, f"no python example under {heading!r}"
    return found.group(1)


def test_the_embedding_example_scores_the_record_with_the_original_tree(tmp_path: Path) -> None:
    example = tmp_path / "example.py"
    example.write_text(python_block_under("## Embedding streamserve"))
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, timeout=300, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["wine", "wine-tree", "5"]
