"""Check functions for the lessons' exercises, and their worked solutions (every lesson).

Each `check_...` function prints one line, ``<what>: right``, ``close`` or ``wrong``, and returns
nothing, so a notebook cell shows just that line. `None` means "not answered yet".
`solution("05.2")` prints a worked solution of exercise 2 of lesson 05 and then runs its check.

Tolerance policy, the same for every exercise: a real number is right within 0.1 % of the expected
value (relative) and close within 1 %; a count, a number of bytes or any other whole number is right
only when exact, and close within 1 %; anything further off is wrong. (Four significant digits are
always enough for a real number; rounding to three can make it close.)

What a check never does: print the expected value, or anything from which it can be read off, such
as the difference between the answer and it. Instead, an answer that matches a common slip (a
gradient forgotten, bytes per float, MiB instead of bytes, degrees instead of radians, a percentage
instead of a share...) is told what to look at; a slip matches within 1 % of its own value, but
never more than halfway to the expected value. Any other wrong answer gets a short hint on the method.

An answer can be a Python number, a 0-d tensor, or a one-element tensor, array, list or tuple.
The expected values are computed here, from the library or from the exercise's numbers, so the
notebooks never show a solution before the learner asks for it.
"""
from __future__ import annotations

# every name of the former single module, the private helpers too
from .common import CLOSE_RTOL, RIGHT_RTOL, Slip, Spec, TOLERANCE_POLICY, _as_number, _grade, _near, _slips
from .lesson00 import _quality, _spec_good_images, _spec_quality, check_good_images, check_quality
from .lesson01 import (
    PAIR_SAME,
    PAIR_SCORES,
    _spec_arcface_logit,
    _spec_fc_parameters,
    _spec_pair_accuracy,
    check_arcface_logit,
    check_fc_parameters,
    check_pair_accuracy,
)
from .lesson02 import (
    _spec_fit_boundary,
    _spec_logits_batch,
    _spec_training_state_bytes,
    check_fit_boundary,
    check_logits_batch,
    check_training_state_bytes,
)
from .lesson03 import _spec_partial_fc_columns, _spec_unsampled_drift, check_partial_fc_columns, check_unsampled_drift
from .lesson04 import _spec_ema_half_life, _spec_ema_value, check_ema_half_life, check_ema_value
from .lesson05 import _spec_attention_weight, _spec_weight_ratio, check_attention_weight, check_weight_ratio
from .lesson06 import _spec_max_weight, _spec_mean_cosine, check_max_weight, check_mean_cosine
from .lesson07 import _spec_container_bytes, _spec_identities_present, check_container_bytes, check_identities_present
from .lesson08 import _spec_attfc_loss, _spec_logit_bytes, check_attfc_loss, check_logit_bytes
from .lesson09 import (
    _spec_encoder_k_bytes,
    _spec_images_per_step,
    _spec_self_key_share,
    check_encoder_k_bytes,
    check_images_per_step,
    check_self_key_share,
)
from .lesson10 import (
    _spec_embedding_grad_bytes,
    _spec_rank_container_bytes,
    _spec_shard_bytes,
    check_embedding_grad_bytes,
    check_rank_container_bytes,
    check_shard_bytes,
)
from .solutions import EXERCISES, Exercise, _OPEN_END, _normalise_id, _show, solution
