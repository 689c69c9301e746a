"""Lesson 02's exercise checks: the FC head's state in bytes, the largest N that fits, when logits set the peak."""
from __future__ import annotations

import math

from .common import Spec, _grade, _slips


def _spec_training_state_bytes(num_classes: int = 2_059_906, embedding_dim: int = 512) -> Spec:
    nd, e = num_classes * embedding_dim, 4
    return Spec("training state", 3 * nd * e, exact=True, in_bytes=True, slips=_slips(
        (2 * nd * e, "Three tensors: W, its gradient and the momentum buffer; one of them is missing."),
        (nd * e, "That is W alone: add its gradient and the SGD momentum buffer."),
        (3 * nd, "Count bytes: a float32 number takes 4 bytes."),
        (3 * nd * 8, "float32 takes 4 bytes per number, not 8."),
        (4 * nd * e, "SGD with momentum keeps one buffer per parameter (Adam keeps two)."),
    ), hint="W, W.grad and the momentum are each an N x D float32 tensor.")


def check_training_state_bytes(answer, num_classes: int = 2_059_906, embedding_dim: int = 512) -> None:
    """Exercise 02.1: bytes of W, its gradient and the SGD momentum in float32."""
    _grade(answer, _spec_training_state_bytes(num_classes, embedding_dim))


def _spec_fit_boundary(device_gib: float = 24.0, embedding_dim: int = 512, batch_size: int = 128) -> Spec:
    from ..memory import predicted_boundary

    d, b, e = embedding_dim, batch_size, 4
    budget = int(device_gib * 2 ** 30)
    batch = 2 * b * d * e + 8 * b  # the embeddings held and those of the phase, and the int64 labels
    return Spec("largest N", predicted_boundary(budget, embedding_dim=d, batch_size=b), exact=True, slips=_slips(
        (predicted_boundary(int(device_gib * 1e9), embedding_dim=d, batch_size=b),
         "24 GiB is 24 x 2**30 bytes; 24 x 10**9 bytes is 24 GB."),
        (budget // (3 * d * e), "W, W.grad and the momentum are only part of the peak: F.normalize(W)'s backward "
                                "adds four more N x D tensors at the same time."),
        ((budget - b * d * e) // (5 * d * e), "That is the backward phase alone: add what is held between steps "
                                              "(W, the momentum and the batch)."),
        ((budget - batch) // (7 * d), "Count bytes: 4 per float32 number."),
        ((budget - batch) // (3 * d * e + 2 * e + 4 * b * e), "With B < D the forward (logits) phase is not the "
                                                              "largest: the F.normalize(W) backward is."),
        (budget // (7 * d * e), "Almost: the batch takes its share of the budget too: what is held with it, and its "
                                 "gradient during the step."),
        (1_141_050, "That is the whole training step with an iResNet-50 backbone (the widget's table); this "
                    "exercise asks for the FC head's step alone."),
    ), hint="The peak is what is held (W, the momentum, the batch) plus the largest phase (here the F.normalize(W) "
            "backward: five N x D tensors at once, plus a B x D gradient); set it equal to the budget "
            "and solve for N.", whole_hint="N is a whole number, and its peak must fit in the budget.")


def check_fit_boundary(answer, device_gib: float = 24.0, embedding_dim: int = 512, batch_size: int = 128) -> None:
    """Exercise 02.2: the largest number of identities whose FC step fits the device."""
    _grade(answer, _spec_fit_boundary(device_gib, embedding_dim, batch_size))


def _spec_logits_batch(num_classes: int = 100_000, embedding_dim: int = 512) -> Spec:
    from ..memory import predict_memory

    d = embedding_dim
    logits_phases = ("forward", "backward: logits")
    expected = next(b for b in range(1, 8 * d) if predict_memory(num_classes, d, b).peak_phase in logits_phases)
    boundary = ("Near the boundary: compare the forward and the backward: centres phases exactly, the norms' 2 N e "
                "included, and solve the inequality for B rather than trying values.")
    return Spec("batch size", expected, exact=True, slips=_slips(
        (128, "That is the lesson's batch, where the F.normalize backward sets the peak: grow B."),
        (expected - 1, boundary), (expected + 1, boundary),
        (math.ceil(5 * d / 4), "The forward phase also holds F.normalize(W), an N x D copy: compare whole phases."),
        (2 * d, "The logits phases hold four B x N buffers, not two."),
    ), hint="Write the forward phase and the backward: centres phase of lesson 02's table as functions of B, and "
            "find the smallest whole B for which the forward is at least as large.")


def check_logits_batch(answer, num_classes: int = 100_000, embedding_dim: int = 512) -> None:
    """Exercise 02.3: the smallest batch from which a logits phase sets the peak."""
    _grade(answer, _spec_logits_batch(num_classes, embedding_dim))
