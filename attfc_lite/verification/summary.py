"""Reading stored results: a few printed lines per result, and means and spread over seeds (lesson 01)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def verification_summary(results: dict) -> str:
    """A few rounded lines describing a result of `evaluate_verification`, with the number of
    pairs behind each figure. Results stored before the all-pairs figures existed still print."""
    if not isinstance(results, dict) or "accuracy_mean" not in results:
        raise ValueError("results must be a dict returned by evaluate_verification (it needs 'accuracy_mean')")
    lines = []
    all_pairs = "num_impostor_all" in results and "num_genuine_all" in results
    if "num_pairs" in results:
        extra = ""
        if "num_genuine" in results and "num_impostor" in results:
            extra = f" ({results['num_genuine']:,} genuine, {results['num_impostor']:,} impostor)"
        what = " sampled for the 10-fold accuracy" if all_pairs else ""
        lines.append(f"pairs: {results['num_pairs']:,}{what}{extra}")
    lines.append(f"10-fold accuracy: {results['accuracy_mean']:.3f} ± {results.get('accuracy_std', 0.0):.3f}")
    n_imp = results.get("num_impostor", "?")
    if all_pairs:
        n_gen_all, n_imp = results["num_genuine_all"], results["num_impostor_all"]
        lines.append(f"pairs: all {n_gen_all + n_imp:,} for AUC and TAR@FAR ({n_gen_all:,} genuine, {n_imp:,} impostor)")
    if results.get("auc") is not None:
        lines.append(f"AUC: {results['auc']:.4f}")
    notes = results.get("tar_at_far_notes", {})
    achieved = results.get("far_achieved", {})
    accepted = results.get("impostors_accepted", {})
    genuine = results.get("genuine_accepted", {})
    for key, tar in results.get("tar_at_far", {}).items():
        if tar is None:
            why = notes.get(key, "not enough impostor pairs")
            lines.append(f"TAR@FAR={key}: n/a ({why})")
            continue
        line = f"TAR@FAR={key}: {tar:.3f}"
        parts = []
        if genuine.get(key) is not None and all_pairs:
            parts.append(f"{genuine[key]:,} of {results['num_genuine_all']:,} genuine pairs accepted")
        if achieved.get(key) is not None:
            where = f"at FAR {achieved[key]:.2g}"
            if accepted.get(key) is not None:
                n = f"{n_imp:,}" if isinstance(n_imp, int) else n_imp
                where += f": {accepted[key]:,} of {n} impostor pairs accepted"
            parts.append(where)
        lines.append(line + (f" ({'; '.join(parts)})" if parts else ""))
    if all_pairs and results.get("tar_at_far"):
        lines.append("TAR@FAR rule: accept score > the (k+1)-th highest impostor score, "
                     "k = floor(FAR x impostor pairs), so the FAR achieved is at most the target")
    for name in ("high", "low"):
        group = results.get("by_quality", {}).get(name)
        if group is None:
            continue
        if group.get("accuracy_mean") is None:
            lines.append(f"{name}-quality pairs ({group['num_pairs']}): too few genuine or impostor pairs for 10 folds")
        else:
            lines.append(
                f"{name}-quality pairs ({group['num_pairs']}): accuracy {group['accuracy_mean']:.3f} ± {group['accuracy_std']:.3f}"
            )
    return "\n".join(lines)


#: How the course's stored runs and sweeps read AUC and TAR@FAR (`all_pairs_verification`).
ALL_PAIRS_PROTOCOL = ("all pairs: AUC and TAR@FAR from every genuine and every impostor pair of the evaluation set "
                      "(all_pairs_verification); the 10-fold accuracy from the sampled LFW-style pair list")


def over_seeds(runs: Sequence[dict]) -> dict:
    """Means over the runs of one setting (one per seed) and their spread (population std over
    seeds; 0 for one seed): 'accuracy_mean', 'accuracy_seed_std', 'tar_at_far' and
    'tar_at_far_seed_std' ({"1e-2": ...}; a None TAR counts as 0), 'auc', 'auc_seed_std'."""
    if not runs:
        raise ValueError("runs is empty: give at least one run")

    def spread(values: list[float]) -> float:
        return float(np.std(values)) if len(values) > 1 else 0.0

    accs = [r["accuracy_mean"] for r in runs]
    keys = list(runs[0]["tar_at_far"])
    tars = {k: [r["tar_at_far"].get(k) or 0.0 for r in runs] for k in keys}
    out: dict[str, Any] = {"accuracy_mean": float(np.mean(accs)), "accuracy_seed_std": spread(accs),
                           "tar_at_far": {k: float(np.mean(v)) for k, v in tars.items()},
                           "tar_at_far_seed_std": {k: spread(v) for k, v in tars.items()}}
    aucs = [r.get("auc") for r in runs]
    if all(a is not None for a in aucs):
        out.update(auc=float(np.mean(aucs)), auc_seed_std=spread(aucs))
    return out
