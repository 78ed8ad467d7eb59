"""Processes that compile one cached kernel at once, on a cold cache, each keep their own
machine code. ``make test``'s workers and a distributed job's ranks do this.

Numba numbers a function's data files in the order it saves them, after reading its index:
two processes saving different signatures together can both take number 1, and when the
first one's data lands after the second one's index, the index names the wrong code. The
interleaving is replayed here step by step, with two cache-file objects for two processes.
"""

import os

import numba
import pytest
from numba.core.caching import IndexDataCacheFile

import cpu_fallback
from cpu_fallback import softmax_xent
from cpu_fallback._cache import KeyedCacheFile, njit


def _interleaved_saves(kind: type, folder: str) -> IndexDataCacheFile:
    """The first process saves its index entry, the second (which read the index before
    that) saves its own entry and data, then the first one's data lands."""
    first, second = kind(folder, "f-1.py311", ("stamp",)), kind(folder, "f-1.py311", ("stamp",))
    deferred = []
    first._save_data = lambda name, data: deferred.append((name, data))
    second._load_index = lambda: {}
    first.save(("X",), "code for X")
    second.save(("Y",), "code for Y")
    kind._save_data(first, *deferred[0])
    return kind(folder, "f-1.py311", ("stamp",))


def test_interleaved_saves_keep_each_signatures_code(tmp_path):
    reader = _interleaved_saves(KeyedCacheFile, str(tmp_path))
    assert reader.load(("X",)) in (None, "code for X")
    assert reader.load(("Y",)) == "code for Y"


def test_numbas_own_files_would_mix_them_up(tmp_path):
    """The replay shows the fault it guards against: Numba's numbering hands the second
    signature the first one's code. (Should a Numba release fix that, this fails, and
    KeyedCacheFile can go.)"""
    reader = _interleaved_saves(IndexDataCacheFile, str(tmp_path))
    assert reader.load(("Y",)) == "code for X"


def test_data_is_written_before_its_index_entry(tmp_path):
    """So that an index entry never names a data file that is missing or half-written."""
    cache_file = KeyedCacheFile(str(tmp_path), "f-1.py311", ("stamp",))
    written = []
    save_index = cache_file._save_index

    def checked(overloads):
        written.extend(os.path.exists(cache_file._data_path(n)) for n in overloads.values())
        save_index(overloads)

    cache_file._save_index = checked
    cache_file.save(("X",), "code for X")
    assert written == [True]
    assert KeyedCacheFile(str(tmp_path), "f-1.py311", ("stamp",)).load(("X",)) == "code for X"


@pytest.mark.skipif(not cpu_fallback.CACHE, reason="no writable cache folder: no cache files")
def test_kernels_use_the_keyed_cache_files():
    assert isinstance(softmax_xent._labels_kernel.serial._cache._cache_file, KeyedCacheFile)
    assert isinstance(softmax_xent.label_rows._cache._cache_file, KeyedCacheFile)


def test_njit_without_caching_is_numbas():
    @njit
    def twice(x):
        return x + x

    assert isinstance(twice, numba.core.registry.CPUDispatcher) and twice(2) == 4
