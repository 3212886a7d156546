"""granite_cli/allocator.py: after keep_freed_memory(), a freed large block is reused instead of faulted in again."""

import os
import subprocess
import sys

from conftest import REPO

# malloc and free a 64 MB block three times, writing every page; print the minor page faults of each round
ROUNDS = """
import ctypes, resource, sys
from granite_cli.allocator import keep_freed_memory
print(keep_freed_memory())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = (64 << 20) // os.sysconf("SC_PAGE_SIZE")


def rounds(**environment) -> tuple[str, list[int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    lines = subprocess.run([sys.executable, "-c", ROUNDS], env={**env, **environment}, cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    return lines[0], [int(n) for n in lines[1:]]


def test_a_freed_block_is_reused_without_faulting_its_pages_again():
    kept, faults = rounds()
    assert kept == "True"
    assert faults[0] >= PAGES * 0.9 and max(faults[1:]) < PAGES * 0.1  # only the first round maps the block


def test_glibc_defaults_stay_when_asked_or_when_the_environment_sets_them():
    for environment in ({"GRANITE_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        kept, faults = rounds(**environment)
        assert kept == "False"
        assert min(faults) >= PAGES * 0.9, environment  # glibc maps a block this large anew and unmaps it when freed
