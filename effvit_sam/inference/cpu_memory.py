"""Keep freed CPU memory for reuse instead of handing it back to the OS (glibc malloc tuning).

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves large blocks (above a threshold
that grows up to 32 MiB) with a fresh ``mmap`` and returns them with ``munmap`` when freed, so the
next activation of that size page-faults and is zeroed by the kernel all over again. In an
EfficientViT encoder the 128x128 and 64x64 stages make 25-64 MiB activations at every layer; on
this 2-core machine a ReLU into a fresh 32 MiB tensor takes 31 ms against 5 ms into an existing
one, and page faults are about a sixth of an L0 encoder call (figures in the README).

:func:`keep_freed_memory` sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, not
``mmap``) and a high ``M_TRIM_THRESHOLD`` (the heap is not shrunk after frees), which is what
jemalloc or tcmalloc under ``LD_PRELOAD`` give PyTorch, without restarting the process. The cost:
the process keeps its peak heap size instead of returning freed memory.

The setting is process-wide and, once made, cannot be undone exactly (glibc stops adapting its
thresholds once they are set), so it is applied once and logged. Elsewhere than glibc Linux it
does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1

_state = {"kept": False, "tried": False}


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None  # musl and others: no mallopt with these meanings
    return libc


def keep_freed_memory() -> bool:
    """Make this process reuse freed CPU memory (see the module docstring). Idempotent.

    Returns True when the setting is in force (now or from an earlier call), False where it
    cannot be made (not glibc); it never raises. Only the first call tries (and logs), so the
    fast path can call it on every encoder call.
    """
    if _state["tried"]:
        return _state["kept"]
    _state["tried"] = True
    libc = _glibc()
    if libc is None:
        log.info("keep_freed_memory: not glibc Linux, malloc left as it is")
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if ok:
        _state["kept"] = True
        log.info("keep_freed_memory: glibc malloc now keeps freed memory for reuse "
                 "(M_MMAP_MAX=0, M_TRIM_THRESHOLD=%d)", _TRIM_THRESHOLD)
    else:
        log.warning("keep_freed_memory: mallopt refused the setting")
    return ok


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in force in this process."""
    return _state["kept"]
