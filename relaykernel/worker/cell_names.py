"""File names of notebook cells: ``<tmp>/ipykernel_<pid>/<murmur2 of the source>.py``.

A cell's code is compiled under a file name derived from its source, the
scheme ipykernel uses, so that tracebacks show a cell with its whole layout
and a debugger frontend can find a cell's file without asking the kernel:
JupyterLab computes ``prefix + str(murmur2(source, seed)) + suffix`` from the
``hashMethod`` ("Murmur2"), ``hashSeed``, ``tmpFilePrefix`` and
``tmpFileSuffix`` a kernel announces in its ``debugInfo`` reply.  So the hash
must be bit for bit JupyterLab's: MurmurHash2, x86 32-bit, over the UTF-8
bytes of the source (lone surrogates encoded as U+FFFD, as the browser's
TextEncoder does).

The directory keeps ipykernel's ``ipykernel_<pid>`` name: tools that recognise
a notebook cell's code by that pattern in a file name work unchanged.  Nothing
is written there; the source of a cell lives in ``linecache``.

Must not import IPython (unit-tested alone).
"""

from __future__ import annotations

import os
import re
import tempfile

#: what a debugger frontend is told (debugInfo's hashMethod and hashSeed)
HASH_METHOD = "Murmur2"
HASH_SEED = 0xC70F6907
#: what follows the hash in a cell's file name (debugInfo's tmpFileSuffix)
SUFFIX = ".py"

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def murmur2(data: bytes, seed: int) -> int:
    """MurmurHash2 (Austin Appleby's x86 32-bit version) of ``data``; an unsigned int."""
    length = len(data)
    h = (seed ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[whole:]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def source_hash(source: str, seed: int = HASH_SEED) -> int:
    """The hash a debugger frontend computes for a cell's source."""
    try:
        data = source.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the browser encodes each as U+FFFD
        data = _LONE_SURROGATE.sub("\ufffd", source).encode("utf-8")
    return murmur2(data, seed)


#: the process the names are made for: the supervisor's, set by the worker
#: (main.py), so a cell keeps its file name in every worker of the kernel (a
#: debugger frontend's breakpoints stay valid after a crash); 0: this process
kernel_pid = 0


def prefix(pid: int | None = None) -> str:
    """What precedes the hash in a cell's file name (debugInfo's tmpFilePrefix), for
    the process ``pid`` (the kernel's by default)."""
    pid = pid if pid is not None else kernel_pid or os.getpid()
    directory = os.path.join(tempfile.gettempdir(), f"ipykernel_{pid}")
    return directory + os.sep


def cell_file_name(source: str) -> str:
    """The file name a cell with this source is compiled under, in this process."""
    return f"{prefix()}{source_hash(source)}{SUFFIX}"
