"""Before measuring: does the predicted peak fit in what the device has free? (lesson 02)

A measurement really allocates what it is asked for. On the CPU nothing stops a process from
asking for far more than the machine holds (the allocator overcommits; the system then swaps or
kills processes), so every measuring entry point compares the memory model's predicted peak with
the memory available now (`available_bytes`) and refuses, before allocating anything, when it
exceeds a safe share of it (`SAFE_SHARE`). The prediction itself costs nothing
(`measure=False`, `--no-measure`).
"""
from __future__ import annotations

import os

import torch

from ..checks import ArgumentError

#: The share of the available memory a measurement may take by default (`max_share` / the
#: command line's --max-share sets another). The CPU's is three quarters: the model leaves out
#: the interpreter, libraries and allocator slack (the measured 1e6-identity FC step came within
#: 0.1 % of it), other processes share the machine, and going over ends in swapping or the OOM
#: killer; three quarters lets a 24 GB machine measure the 13.4 GiB step of full FC at a million
#: identities. On CUDA an allocation past the device raises a clean out-of-memory error, so only
#: the CUDA context and the caching allocator's rounding need room.
SAFE_SHARE = {"cpu": 0.75, "cuda": 0.9}

_UNITS = (("EiB", 2 ** 60), ("PiB", 2 ** 50), ("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10))


def format_bytes(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1: '2.0 MiB', '12.7 PiB'."""
    for unit, size in _UNITS:
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _cpu_available() -> int:
    """Bytes this process can still get: the least of the kernel's MemAvailable, the cgroup's
    limit minus its use (a container's limit can lie far below the host's memory) and the
    address-space limit (RLIMIT_AS) minus the address space in use."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    if not found:
        try:  # no /proc (not Linux): free pages, which undercounts (no reclaimable cache)
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_path, used_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, used = _read_int(limit_path), _read_int(used_path)
        if limit is not None and used is not None and limit < 2 ** 60:  # v1 writes ~2**63 for no limit
            found.append(max(0, limit - used))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            found.append(max(0, soft - _vm_size()))
    except (ImportError, OSError, RuntimeError):
        pass
    if not found:
        raise RuntimeError("cannot tell how much memory is available (no /proc/meminfo, no sysconf); "
                           "use measure=False for the prediction alone")
    return min(found)


def available_bytes(device: str | torch.device) -> int:
    """Bytes a new allocation on `device` can get now. CPU: see `_cpu_available`. CUDA: the
    driver's free memory plus what this process's caching allocator holds unused."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    return _cpu_available()


def check_share(max_share: float | None) -> float | None:
    """`max_share` checked: None (the device's `SAFE_SHARE`) or a share in (0, 1]."""
    if max_share is None:
        return None
    from ..checks import as_float

    return as_float("max_share", max_share, 0, 1, low_open=True)


def check_fits(need_bytes: int, device: str | torch.device, name: str | None, subject: str, advice: str,
               max_share: float | None = None) -> None:
    """Refuse, before anything is allocated, when `need_bytes` exceeds the safe share of what
    `device` has available: `max_share` of it, or by default `SAFE_SHARE` of the device's kind.
    `subject` says what needs it ("N = 10^12, D = 512, B = 128: one fc head step"), `advice`
    what to do instead.

    `name`: the one argument that sets the size (as 'budget_bytes'): an ArgumentError naming it.
    None: a step whose sizes together (N, D, B and AttFC's K) set its memory, so a ValueError that
    blames no one argument: "this step is too large to measure on cpu: N = ..., D = ..., B = ...".
    """
    dev = torch.device(device)
    given = check_share(max_share)
    share = SAFE_SHARE.get(dev.type, SAFE_SHARE["cpu"]) if given is None else given
    available = available_bytes(dev)
    if need_bytes <= share * available:
        return
    why = (f"too large to measure on {dev}: {subject} needs about {format_bytes(need_bytes)} (the memory model's "
           f"predicted peak), {dev} has {format_bytes(available)} available and a measurement may use at most "
           f"{share:.0%} of it ({format_bytes(share * available)}; max_share, --max-share on the command line, "
           f"{'sets' if given is None else 'set'} that share: up to 1 at your own risk); nothing was allocated. "
           f"{advice}")
    if name is None:
        raise ValueError(f"this step is {why}")
    raise ArgumentError(name, f"is {why}")


def _vm(field: str = "VmSize") -> int:
    """Bytes of a /proc/self/status field: VmSize, the address space RLIMIT_AS caps, or VmPeak,
    the most of it this process has held."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")  # pragma: no cover


def _vm_size() -> int:
    return _vm("VmSize")
