"""The README's python examples run as written; the meta-learning API one prints its result."""

from __future__ import annotations

from pathlib import Path

import stream_meta.meta

README = Path(stream_meta.meta.__file__).parents[2] / "README.md"


def python_blocks() -> list[str]:
    return [part.split("```", 1)[0] for part in README.read_text().split("```python")[1:]]


def test_readme_examples_run(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 2  # the learner's configuration groups, the meta-learning API
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    assert "new task, 10 steps:" in capsys.readouterr().out
