"""Lesson 09's exercise checks: the key encoder's bytes, images per step, and queries whose key is the query."""
from __future__ import annotations

from .common import Spec, _grade, _slips


def _spec_encoder_k_bytes(parameters: int = 43_600_000) -> Spec:
    p = parameters
    return Spec("encoder_k bytes", 4 * p, exact=True, in_bytes=True, slips=_slips(
        (8 * p, "encoder_k has no optimizer: no momentum buffer, only its weights."),
        (12 * p, "encoder_k gets no gradient and no momentum: it is updated by EMA under no_grad."),
        (2 * p, "The weights are fp32: 4 bytes each."),
        (p, "Count bytes: 4 per fp32 weight."),
    ), hint="A copy of the backbone's weights, 4 bytes each; nothing else is kept between steps "
            "(BatchNorm buffers are negligible here).")


def check_encoder_k_bytes(answer, parameters: int = 43_600_000) -> None:
    """Exercise 09.1: what AttFC's key encoder adds to memory for a backbone of `parameters` fp32
    weights: one copy, with no gradient and no optimizer state."""
    _grade(answer, _spec_encoder_k_bytes(parameters))


def _spec_images_per_step(batch_size: int = 128, num_keys: int = 4) -> Spec:
    b, k = batch_size, num_keys
    return Spec("images", b * (1 + k), exact=True, slips=_slips(
        (b * k, "The B queries go through encoder_q too."),
        (b, "Each query also has K key images, embedded by encoder_k."),
        (b * (2 + k), "The backward pass does not embed images again."),
        (b + k, "Each query has its own K key images: K per query, not K per batch."),
        (b * 3, "That is with lesson 09's own K = 2: the exercise asks for K = 4."),
    ), hint="B queries through encoder_q, and K key images for each of them through encoder_k.")


def check_images_per_step(answer, batch_size: int = 128, num_keys: int = 4) -> None:
    """Exercise 09.2: images through a backbone (encoder_q or encoder_k) in one AttFC step."""
    _grade(answer, _spec_images_per_step(batch_size, num_keys))


def _spec_self_key_share(images_per_identity: int = 3, num_keys: int = 2) -> Spec:
    n, k = images_per_identity, num_keys
    none = (1 - 1 / n) ** k
    return Spec("share", 1 - none, slips=_slips(
        (1 / n, "That is one key's chance: the query has K keys, and any of them may be it."),
        (k / n, "Adding the K chances counts twice the queries where two keys are the query: take the "
                "complement, 1 - P(no key is the query)."),
        (none, "That is the share of queries with NO key equal to the query: the question asks for the rest."),
        ((1 / n) ** k, "That is the share where EVERY key is the query; at least one is asked."),
        (1 - (1 - 1 / (n - 1)) ** k if n > 1 else 2.0,
         "That is the share for one image fewer (the lesson's stored run had 2): here the identity has "
         f"{n} images, the query one of them, and each key is drawn among all {n}."),
    ), hint="Each key is the query with probability 1/n, independently; P(no key is) = (1 - 1/n)^K.")


def check_self_key_share(answer, images_per_identity: int = 3, num_keys: int = 2) -> None:
    """Exercise 09.3: the share of queries with at least one key that is the query image itself,
    when K keys are drawn with replacement among the identity's n images: 1 - (1 - 1/n)^K."""
    _grade(answer, _spec_self_key_share(images_per_identity, num_keys))
