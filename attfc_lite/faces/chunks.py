"""How many images one render holds at once: chunk sizes that keep a render's temporaries
bounded at any image size, on a CPU and on an accelerator (lesson 00).
"""
from __future__ import annotations

import torch

from .canvas import DEFAULT_IMAGE_SIZE

# A render's temporaries grow with its pixels: 60-90 bytes a pixel (measured), about 70 KiB for a
# 32-pixel image and 850 KiB for a 112-pixel one. Chunk sizes are given for 32-pixel images and
# scaled by (32 / image_size)^2 (`scaled_chunk`), so that a chunk's temporaries take the same
# bytes at any size. On a CPU, chunks of a few hundred 32-pixel images keep every temporary in
# the cache: about 5x faster than one huge batch, whose element-wise ops are memory-bound. An
# accelerator wants large chunks to keep busy, and gets about 1 GiB of temporaries.
_CPU_CHUNK = 512
_DEVICE_CHUNK = 16384

# render_images' batch for 32-pixel images, scaled with the pixel count like the chunks above:
# about 17 MiB of temporaries and 3 MiB of float output per batch at any image size.
RENDER_CHUNK = 256


def scaled_chunk(images_at_32: int, image_size: int) -> int:
    """Images whose render takes the bytes of `images_at_32` 32-pixel ones: max(1, n * (32 / size)^2).

    Exactly `images_at_32` at 32 pixels; 20 of 256 at 112 pixels, 1 at 512.
    """
    return max(1, images_at_32 * DEFAULT_IMAGE_SIZE**2 // image_size**2)


def render_chunk(image_size: int, device="cpu") -> int:
    """The most images `FaceWorld.render` renders at once on `device` at `image_size` pixels."""
    on_cpu = torch.device(device).type == "cpu"
    return scaled_chunk(_CPU_CHUNK if on_cpu else _DEVICE_CHUNK, image_size)
