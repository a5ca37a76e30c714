"""relaykernel.heap: warm memory for large buffers in the supervisor, huge pages for the worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from relaykernel.heap import HUGEPAGE_TUNABLE, TUNABLES_ENV, hugepage_tunables, restore_tunables

#: In a fresh process: a libzmq thread receives a 50 MB message twice; how many
#: page faults the second receive costs, and the RSS after release_freed_memory.
PROBE = r"""
import os, resource, sys, tempfile, zmq
from relaykernel import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
ctx = zmq.Context()
d = tempfile.mkdtemp()
a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
a.bind(f"ipc://{d}/x"); b.connect(f"ipc://{d}/x")
payload = b"x" * (50 << 20)
base = rss_mb()
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a.send(payload, copy=False)
    frame = b.recv(copy=False)  # allocated and filled by libzmq's IO thread
    assert len(frame) == len(payload)
    del frame
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
kept = rss_mb() - base
heap.release_freed_memory()
print(faults[1], round(kept), round(rss_mb() - base))
a.close(); b.close(); ctx.term()
"""


def _probe(mode: str) -> tuple[int, int, int]:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    faults, kept, after_release = map(int, result.stdout.split())
    return faults, kept, after_release


needs_glibc = pytest.mark.skipif(not os.confstr("CS_GNU_LIBC_VERSION"), reason="mallopt is glibc's")


@needs_glibc
def test_kept_memory_takes_the_next_large_buffer_without_page_faults_and_is_given_back() -> None:
    faults, kept, after_release = _probe("keep")
    # 50 MB is 12,800 pages: a fresh mapping faults each one in
    assert faults < 1000, f"the second 50 MB receive faulted {faults} pages in"
    assert kept >= 40, f"only {kept} MB stayed in the heap"
    assert after_release < 20, f"{after_release} MB still resident after release_freed_memory"


@needs_glibc
def test_with_glibcs_defaults_every_large_buffer_faults_its_pages_in() -> None:
    """The control for the test above: what keep_freed_memory changes."""
    faults, kept, _ = _probe("default")
    assert faults > 6000
    assert kept < 20


def test_the_worker_gets_huge_pages_added_to_the_users_tunables() -> None:
    assert hugepage_tunables(None) == HUGEPAGE_TUNABLE
    assert hugepage_tunables("") == HUGEPAGE_TUNABLE
    assert hugepage_tunables("glibc.malloc.perturb=1") == f"glibc.malloc.perturb=1:{HUGEPAGE_TUNABLE}"
    # a user who chose huge pages (or no huge pages) keeps that choice
    assert hugepage_tunables("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"


def test_restore_tunables_puts_back_the_inherited_value(monkeypatch) -> None:
    monkeypatch.setenv(TUNABLES_ENV, HUGEPAGE_TUNABLE)
    restore_tunables(None)
    assert TUNABLES_ENV not in os.environ
    monkeypatch.setenv(TUNABLES_ENV, HUGEPAGE_TUNABLE)
    restore_tunables("glibc.malloc.perturb=1")
    assert os.environ[TUNABLES_ENV] == "glibc.malloc.perturb=1"
