"""Course conventions every lesson keeps (read from the notebook files, nothing executed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cells(path: Path) -> list[tuple[str, str]]:
    return [(c["cell_type"], "".join(c["source"])) for c in json.loads(path.read_text())["cells"]]


def test_there_are_eleven_lessons():
    assert [p.name[:2] for p in LESSONS] == [f"{i:02d}" for i in range(11)]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_lesson_states_its_running_time_and_has_a_switch_for_slow_machines(path):
    nb = cells(path)
    top = "\n".join(text for kind, text in nb[:2] if kind == "markdown")
    assert re.search(r"\*\*Running time:?\*\*:?[^\n]*\b\d+ (seconds|minutes?|s)\b", top), \
        f"{path.name}: the first cells must say '**Running time:** about N seconds/minutes on two CPU cores'"
    assert "FAST = True" in top, f"{path.name}: the top must say how to use the FAST switch"
    first_code = next(text for kind, text in nb if kind == "code")
    assert re.search(r"^FAST = False\s+#", first_code, re.M), \
        f"{path.name}: the first code cell must define FAST = False with a comment saying what True does"
    uses = sum(len(re.findall(r"\bFAST\b", text)) for kind, text in nb if kind == "code")
    assert uses >= 2, f"{path.name}: FAST is defined but never used"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_no_solution_is_stored_in_a_lesson(path):
    """Solutions live in the library (`exercises.solution`), hidden in every viewer."""
    for kind, text in cells(path):
        assert not (kind == "code" and text.lstrip().lower().startswith("# solution")), \
            f"{path.name}: a solution cell; move it to attfc_lite.exercises and point to solution('..')"
