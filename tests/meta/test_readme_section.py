"""The README's example of the meta-learning API (its first python block) runs as written."""

from __future__ import annotations

from pathlib import Path

import stream_meta.meta

SECTION = Path(stream_meta.meta.__file__).parents[2] / "README.md"


def test_readme_example_runs(capsys):
    code = SECTION.read_text().split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, str(SECTION), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "new task, 10 steps:" in out
