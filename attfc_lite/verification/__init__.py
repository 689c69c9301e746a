"""Face verification on identities never seen in training: the LFW protocol (lesson 01).

A verification test is a list of image pairs, each either genuine (same identity) or
impostor (different identities). A model embeds every image, a pair is scored by the cosine
similarity of its two embeddings, and the scores are judged three ways:

- 10-fold accuracy (`kfold_accuracy`): the threshold is chosen on nine folds and the
  accuracy measured on the tenth, so the threshold never sees the pairs it is judged on.
- TAR at a fixed FAR (`tar_at_far`): the fraction of genuine pairs accepted when the
  threshold lets through a given fraction of impostors, read off the ROC curve.
- The ROC curve and its area (`roc_curve`, `plot_roc`).

A low FAR needs many impostor pairs: at FAR 1e-4, a list of 10,000 impostors decides the TAR
by a single pair. `all_pairs_verification` therefore computes the ROC, AUC and TAR@FAR from
every pair of the evaluation set (all genuine and all impostor pairs), in row chunks of the
similarity matrix so that memory stays bounded, while the 10-fold accuracy keeps the LFW
protocol's sampled pair list. `evaluate_verification` runs all of it on a model and a set of
labelled images and returns a JSON-serialisable dict; `verification_summary` prints it in a
few lines, with the number of pairs behind each figure.

The package, by concern (each module imports only those before it in this list): `pairs` (the
sampled pair list, `make_pairs`, and its quality split), `metrics` (ROC, AUC, 10-fold accuracy
and TAR@FAR of a list of scores), `all_pairs` (`all_pairs_verification`), `embeddings`
(`embed`), `evaluate` (`evaluate_verification`), `summary` (`verification_summary`,
`over_seeds`) and `plots` (`plot_roc`, `plot_quality_split`). Every name is re-exported here.
The private constants and helpers are too, but each submodule looks up its own: to patch one
(say `_TILE` or `_impostor_scores`), patch the submodule that uses it
(`attfc_lite.verification.all_pairs`).
"""
from __future__ import annotations

from .pairs import _check_labels, _draw_unique, _quality_split, _unrank_pair, make_pairs
from .embeddings import _model_device, embed
from .metrics import (
    _FOLDS,
    _TIE_TOL,
    DEFAULT_FARS,
    FAR_RULES,
    _as_scores,
    _best_threshold,
    _check_fars,
    _far_key,
    _fold_of,
    _impostors_needed,
    _roc_points,
    kfold_accuracy,
    roc_curve,
    tar_at_far,
    tar_at_far_report,
)
from .all_pairs import (
    _BUCKETS,
    _CHUNK_ELEMENTS,
    _ROC_LINEAR_POINTS,
    _ROC_LOG_POINTS,
    _TILE,
    FAR_CONVENTION,
    _bucket,
    _genuine_scores,
    _impostor_scores,
    _sorted_embeddings,
    _thin_roc,
    all_pairs_verification,
)
from .evaluate import evaluate_verification
from .summary import ALL_PAIRS_PROTOCOL, over_seeds, verification_summary
from .plots import _FAR_MARKERS, plot_quality_split, plot_roc

__all__ = [
    "plot_quality_split",
    "make_pairs",
    "embed",
    "roc_curve",
    "kfold_accuracy",
    "tar_at_far",
    "tar_at_far_report",
    "all_pairs_verification",
    "FAR_CONVENTION",
    "evaluate_verification",
    "verification_summary",
    "over_seeds",
    "ALL_PAIRS_PROTOCOL",
    "plot_roc",
]
