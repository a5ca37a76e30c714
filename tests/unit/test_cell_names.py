"""relaykernel.worker.cell_names: the hash and file names a debugger frontend computes."""

from __future__ import annotations

import os
import tempfile

from relaykernel.worker import cell_names
from relaykernel.worker.cell_names import HASH_SEED, murmur2, source_hash


def test_murmur2_passes_smhasher_verification():
    """SMHasher's check of a 32-bit hash: hash the keys b'', b'\\x00', b'\\x00\\x01', ...
    (255 bytes) with seeds 256, 255, ..., 1, then hash the concatenated little-endian
    results with seed 0.  MurmurHash2's published verification value is 0x27864C1E."""
    key = bytes(range(256))
    results = b"".join(murmur2(key[:i], 256 - i).to_bytes(4, "little") for i in range(256))
    assert murmur2(results, 0) == 0x27864C1E


def test_known_vectors():
    # the empty input with seed 0 hashes to 0 in MurmurHash2
    assert murmur2(b"", 0) == 0
    # cross-checked with ipykernel 7.4's murmur2_x86 (which JupyterLab's hash.ts matches)
    assert source_hash("", HASH_SEED) == 3990065800
    assert source_hash("a", 0) == 2456313694
    assert source_hash("abc", 0) == 324500635
    assert source_hash("abcd", 0) == 646393889
    assert source_hash("abcd") == 804720481
    assert source_hash("print('hello')\n") == 4288063316
    # multi-byte UTF-8, 1-3 byte tails
    assert source_hash("héllo wörld ✓ 🎉") == 2549615203
    assert source_hash("héllo wörld ✓ 🎉", 0) == 320457904


def test_results_are_unsigned_32_bit():
    for i in range(64):
        value = murmur2(bytes(range(i)), 0xFFFFFFFF)
        assert 0 <= value <= 0xFFFFFFFF


def test_lone_surrogates_hash_as_the_browser_encodes_them():
    """TextEncoder turns a lone surrogate into U+FFFD; str.encode would raise."""
    assert source_hash("a\ud800b") == source_hash("a\ufffdb")


def test_file_name_is_prefix_hash_suffix():
    code = "x = 1\n"
    name = cell_names.cell_file_name(code)
    assert name == f"{cell_names.prefix()}{source_hash(code)}{cell_names.SUFFIX}"
    assert cell_names.prefix() == os.path.join(tempfile.gettempdir(), f"ipykernel_{os.getpid()}") + os.sep
    assert cell_names.prefix(123) == os.path.join(tempfile.gettempdir(), "ipykernel_123") + os.sep
    assert cell_names.SUFFIX == ".py" and cell_names.HASH_METHOD == "Murmur2"
    assert HASH_SEED == 0xC70F6907
