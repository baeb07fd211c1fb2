"""keep_freed_memory: a freed large block is kept in the heap and reused (in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from effvit_sam.inference import cpu_memory

# Where a freed 64 MiB block's successor lives: inside the brk heap ("[heap]" in /proc/self/maps,
# memory the process keeps) or in an anonymous mapping of its own (returned to the OS on free).
SCRIPT = """
import json, sys
import torch
from effvit_sam.inference.cpu_memory import keep_freed_memory, freed_memory_kept

def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            return tuple(int(v, 16) for v in line.split()[0].split("-"))
    return (0, 0)

applied = keep_freed_memory() if sys.argv[1] == "keep" else False
first = torch.ones(16 * 2**20)  # 64 MiB
del first
second = torch.ones(16 * 2**20)
lo, hi = heap()
in_heap = lo <= second.data_ptr() < hi
del second
lo, hi = heap()
print(json.dumps({"applied": applied, "kept": freed_memory_kept(),
                  "again": keep_freed_memory() if applied else None,
                  "in_heap": in_heap, "heap_mib_after_free": (hi - lo) / 2**20}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="glibc malloc only")
def test_freed_memory_is_reused_without_page_faults() -> None:
    default, kept = _run("default"), _run("keep")
    # Default glibc: a block this large is a fresh mmap, unmapped again when freed.
    assert not default["applied"] and not default["kept"] and not default["in_heap"], default
    # Kept: it comes from the heap, which keeps the memory after the block is freed.
    assert kept["applied"] and kept["kept"] and kept["again"] is True
    assert kept["in_heap"], kept
    assert kept["heap_mib_after_free"] >= default["heap_mib_after_free"] + 48, (default, kept)
