"""The library as a house (course-design.md): no import circles, arrows down only, rooms a reader
can hold. Read from the source with `ast`, so an import inside a function counts as an arrow too."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attfc_lite"
MAX_LINES = 620  # "about 600": a room read in one sitting


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _arrows() -> dict[str, set[str]]:
    """module -> the attfc_lite modules it imports (anywhere in its text)."""
    modules = _modules()
    arrows: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + node.module.split(".") if node.module else base)
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                # `from package import submodule` runs the submodule, not what the package's __init__ holds
                targets = subs + ([target] if target in modules and len(subs) < len(node.names) else [])
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in modules]
            else:
                continue
            arrows[name].update(t for t in targets if t != name)
    return arrows


def _circles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that reach each other (Tarjan's strongly connected components, iterative)."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], 0
    for root in arrows:
        if root in index:
            continue
        work = [(root, iter(sorted(arrows[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(arrows[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_the_circle_finder_finds_a_circle():
    # the finder itself, on a hand-made graph: a -> b -> c -> a, and d alone
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_library():
    assert _circles(_arrows()) == []


@pytest.mark.parametrize("low,high", [
    ("attfc_lite.memory", "attfc_lite.train"),  # memory is measured without training
    ("attfc_lite.memory", "attfc_lite.capped"),
    ("attfc_lite.memory", "attfc_lite.run"),
    ("attfc_lite.heads.base", "attfc_lite.heads.attfc"),  # the base knows no head built on it
    ("attfc_lite.heads.base", "attfc_lite.heads.partial_fc"),
    ("attfc_lite.step", "attfc_lite.train"),
    ("attfc_lite.config", "attfc_lite.train"),
])
def test_arrows_point_down(low, high):
    arrows = _arrows()
    for name in arrows:
        if name == low or name.startswith(low + "."):
            assert not any(t == high or t.startswith(high + ".") for t in arrows[name]), (name, arrows[name])


def test_every_room_is_small_enough_to_read_in_one_sitting():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, (path, _) in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_every_room_says_which_lesson_it_belongs_to():
    # the first paragraph of each module's docstring, as `help()` and the README's table show it
    silent = []
    for name, (path, _) in _modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if not re.search(r"\blessons?\b|README's commands", doc.split("\n\n")[0], re.IGNORECASE):
            silent.append(name)
    assert silent == []
