"""The memory model's phases in a measured step: autograd hooks that mark where the model's backward
phases begin (`HEAD_PHASES`), and the model phase of each allocation record from those marks (lesson 02)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from ..heads import Head


def _autograd_graph(root) -> list:
    """Every autograd node reachable from `root` (a loss's grad_fn), parents before children."""
    nodes, seen, todo = [], set(), [root]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        todo.extend(child for child, _ in node.next_functions)
    return nodes


def _split_nodes(loss: torch.Tensor, params: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
                 names: Sequence[str]) -> dict[str, list]:
    """The autograd nodes where the model's backward phases `names` begin.

    'backward: centres' begins where the gradient branches off towards the class centres: a
    node from which both a head parameter and an input embedding are reached, with a child that
    reaches the parameter alone (FC's and Partial FC's `mm` of the cosines). 'backward:
    scatter' begins at a node on the parameter's side that feeds the parameter itself (Partial
    FC's gather `W[index]`, whose backward scatters into a dense N x D gradient)."""
    if loss is None or loss.grad_fn is None or not params or not inputs:
        return {}
    nodes = _autograd_graph(loss.grad_fn)
    param_ids = {id(p) for p in params}
    input_ids = {id(x) for x in inputs}

    def leaf_of(node, ids) -> bool:
        var = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        return var is not None and id(var) in ids

    reach_w: dict[int, bool] = {}
    reach_x: dict[int, bool] = {}
    changed = True  # the node order is not a topological one: iterate to a fixed point
    while changed:
        changed = False
        for node in reversed(nodes):  # mostly children first: few rounds
            kids = [c for c, _ in node.next_functions if c is not None]
            w = leaf_of(node, param_ids) or any(reach_w.get(id(c), False) for c in kids)
            x = leaf_of(node, input_ids) or any(reach_x.get(id(c), False) for c in kids)
            if (w, x) != (reach_w.get(id(node), False), reach_x.get(id(node), False)):
                reach_w[id(node)], reach_x[id(node)] = w, x
                changed = True
    found: dict[str, list] = {}
    for node in nodes:
        kids = [c for c, _ in node.next_functions if c is not None]
        w, x = reach_w.get(id(node), False), reach_x.get(id(node), False)
        if "backward: centres" in names and w and x and any(
                reach_w.get(id(c), False) and not reach_x.get(id(c), False) for c in kids):
            found.setdefault("backward: centres", []).append(node)
        if "backward: scatter" in names and w and not x and not leaf_of(node, param_ids) and any(
                leaf_of(c, param_ids) for c in kids):
            found.setdefault("backward: scatter", []).append(node)
    return found


def _split_phase_names(kind: str) -> list[str]:
    """The model phases that begin inside a measured phase (not at its start): the ones to find."""
    from .head_model import HEAD_PHASES, MEASURED_PHASES

    names, firsts = [], set()
    for phase in HEAD_PHASES[kind]:
        measured = next((m for m, covered in MEASURED_PHASES.items() if phase in covered), None)
        if measured in firsts:
            names.append(phase)
        firsts.add(measured)
    return names


@contextlib.contextmanager
def _model_phase_hooks(head: Head, kind: str, split: Callable[[str], None] | None) -> Iterator[None]:
    """While active, each forward of `head` hooks `split(name)` onto the autograd nodes where the
    model's backward phases begin (`_split_nodes`); each name fires once per backward."""
    names = _split_phase_names(kind)
    if split is None or not names:
        yield
        return
    params = [p for p in head.parameters() if p.requires_grad]

    def on_forward(module, args, output) -> None:
        loss = output if isinstance(output, torch.Tensor) else None
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        fired: set[str] = set()
        for name, nodes in _split_nodes(loss, params, inputs, names).items():
            def prehook(grad_outputs, name=name):
                if name not in fired:
                    fired.add(name)
                    split(name)
            for node in nodes:
                node.register_prehook(prehook)

    handle = head.register_forward_hook(on_forward)
    try:
        yield
    finally:
        handle.remove()


def _model_phase_labels(phases: Sequence[str], split_marks: Sequence[tuple[int, str]], kind: str) -> list[str]:
    """The model's phase of each record, from its measured phase and the splits seen.

    A measured phase starts in the first model phase it covers; each split moves on to the named
    phase. Model phases of a measured phase that no split separated share its records, and the
    label names them all ('forward: attention + forward: container')."""
    from .head_model import HEAD_PHASES, MEASURED_PHASES

    model = list(HEAD_PHASES[kind])
    covered = {m: [p for p in model if p in names] for m, names in MEASURED_PHASES.items()}
    seen = {name for _, name in split_marks}
    at = {i: name for i, name in split_marks}
    labels: list[str] = []
    current, last_measured = "", None
    for i, measured in enumerate(phases):
        group = covered.get(measured, [])
        starts = [p for p in group if p == group[0] or p in seen]  # the phases that begin somewhere
        if measured != last_measured:
            last_measured = measured
            current = _joined(group, starts, group[0]) if group else measured
        if i in at and at[i] in group:
            current = _joined(group, starts, at[i])
        labels.append(current)
    return labels


def _joined(group: Sequence[str], starts: Sequence[str], start: str) -> str:
    """The model phases from `start` up to the next phase that has a start of its own, joined."""
    i = list(group).index(start)
    out = [start]
    for p in group[i + 1:]:
        if p in starts:
            break
        out.append(p)
    return " + ".join(out)
