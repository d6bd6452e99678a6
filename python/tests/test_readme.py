"""The README's Python examples run (the torch one only where torch is installed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


def test_tutorial_runs():
    exec(compile(BLOCKS[0], str(README), "exec"), {})


def test_torch_example_runs():
    pytest.importorskip("torch")
    ns: dict = {}
    exec(compile(BLOCKS[0], str(README), "exec"), ns)
    exec(compile(BLOCKS[1].replace("range(3)", "range(1)"), str(README), "exec"), ns)
