"""Lesson 00's exercise checks: an image's ground-truth quality, and how many images pass a threshold."""
from __future__ import annotations

import torch

from .common import Spec, _grade, _slips


def _quality(world, identity: int, image: int) -> float:
    return float(world.quality(torch.tensor([identity]), torch.tensor([image]))[0])


def _spec_quality(identity: int = 42, image: int = 3, seed: int = 0) -> Spec:
    from ..faces import FaceWorld

    world = FaceWorld(seed)
    q = _quality(world, identity, image)
    pairs = [(1 - q, "That is the severity of the degradation: quality = 1 - severity."),
             (100 * q, "Give the quality as a number between 0 and 1, not a percentage.")]
    if identity != image:
        pairs.append((_quality(world, image, identity), "Identity and image are swapped: `world.quality` takes "
                                                        "the identities first, then the image indices."))
    if image >= 1:
        pairs.append((_quality(world, identity, image - 1), "Image indices count from 0: image 3 is index 3, "
                                                            "not the third image."))
    return Spec("quality", q, slips=_slips(*pairs),
                hint=f"Ask `FaceWorld(seed={seed}).quality` for one identity and one image index (tensors of one "
                     "element each) and take the number it returns.")


def check_quality(answer, identity: int = 42, image: int = 3, seed: int = 0) -> None:
    """Exercise 00.1: the ground-truth quality of one image, found without rendering it."""
    _grade(answer, _spec_quality(identity, image, seed))


def _spec_good_images(identity: int = 7, images: int = 100, threshold: float = 0.8, seed: int = 0) -> Spec:
    from ..faces import FaceWorld

    world = FaceWorld(seed)
    q = world.quality(torch.full((images,), identity), torch.arange(images))
    count = int((q > threshold).sum())
    shifted = world.quality(torch.full((images,), identity), torch.arange(1, images + 1))
    return Spec("count", count, exact=True, slips=_slips(
        (images - count, f"That counts the images at or below {threshold}: count those above it."),
        (count / images, "Give the number of images, not a share of them."),
        (int(((1 - q) > threshold).sum()), "That compares the severity with the threshold: quality = 1 - severity."),
        (int((shifted > threshold).sum()), f"The first {images} images are the indices 0 to {images - 1}."),
    ), hint=f"Get all {images} qualities in one call of `world.quality` (identity {identity} repeated, image "
            f"indices 0 to {images - 1}) and count those above {threshold}.")


def check_good_images(answer, identity: int = 7, images: int = 100, threshold: float = 0.8, seed: int = 0) -> None:
    """Exercise 00.2: how many of an identity's first images have quality above a threshold."""
    _grade(answer, _spec_good_images(identity, images, threshold, seed))
