"""`bench`: how fast the face world renders, in images per second, on a CPU or a GPU (lesson 00)."""
from __future__ import annotations

import torch

from ..checks import as_int
from .canvas import DEFAULT_IMAGE_SIZE
from .chunks import render_chunk
from .world import MAX_IDENTITIES, FaceWorld, _check_device

#: The most images `bench` renders per run (about 10 minutes of CPU at 32 pixels).
MAX_BENCH_IMAGES = 10_000_000


def bench(num_images: int = 16384, image_size: int = DEFAULT_IMAGE_SIZE, device=None, repeats: int = 3,
          seed: int = 0) -> dict:
    """Batched rendering speed: the best of `repeats` timed runs after a warm-up.

    Each run renders `num_images` (at most `MAX_BENCH_IMAGES`) in `FaceWorld.render`'s own
    chunks (`render_chunk`), building each chunk's indices and dropping its images: memory
    stays at one chunk whatever `num_images` and `image_size` are.
    """
    import time

    num_images = as_int("num_images", num_images, 1, MAX_BENCH_IMAGES)
    repeats = as_int("repeats", repeats, 1)
    device = _check_device(device)
    world = FaceWorld(seed=seed, image_size=image_size)
    chunk = render_chunk(world.image_size, device)

    def render_range(start: int, stop: int) -> None:
        k = torch.arange(start, stop, device=device)
        world.render(k * 7919 % MAX_IDENTITIES, k % 50)

    def render_all() -> None:
        for start in range(0, num_images, chunk):
            render_range(start, min(start + chunk, num_images))

    render_range(0, min(chunk, num_images))  # warm-up: allocator, kernels
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        render_all()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return {"images_per_second": round(num_images / best, 1), "image_size": world.image_size,
            "num_images": num_images, "seconds": round(best, 4), "device": device.type,
            "threads": torch.get_num_threads(), "chunk": chunk}
