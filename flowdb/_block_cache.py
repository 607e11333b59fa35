"""BlockCache: the LRU cache of decompressed, checksum-verified SSTable blocks.

Keys are ``(file_number, block_offset)``; values are the block's bytes,
charged by ``len``.  One cache is shared by every TableReader of an engine,
so it is thread-safe: every method takes one lock, held only for dictionary
work (never for I/O).  Capacity 0 disables caching: ``put`` stores nothing.

A value larger than the whole capacity is not stored (it would evict
everything and then itself).
"""
from collections import OrderedDict
import threading


class BlockCache:
    """Thread-safe LRU of key -> bytes, bounded by the sum of ``len(value)``."""

    __slots__ = ("_capacity", "_usage", "_map", "_lock", "hits", "misses")

    def __init__(self, capacity_bytes):
        capacity_bytes = int(capacity_bytes)
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        self._capacity = capacity_bytes
        self._usage = 0
        self._map = OrderedDict()   # key -> bytes, least recently used first
        self._lock = threading.Lock()
        self.hits = 0               # get() calls that found their key
        self.misses = 0             # get() calls that did not

    @property
    def capacity(self):
        """Bytes the cache may hold."""
        return self._capacity

    @property
    def usage(self):
        """Bytes held now."""
        return self._usage

    def __len__(self):
        return len(self._map)

    def get(self, key):
        """The cached bytes of key (and mark them recently used), or None."""
        with self._lock:
            value = self._map.get(key)
            if value is None:
                self.misses += 1
                return None
            self._map.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key, value):
        """Caches value under key, evicting least recently used entries."""
        size = len(value)
        if size > self._capacity:
            return
        with self._lock:
            old = self._map.pop(key, None)
            if old is not None:
                self._usage -= len(old)
            self._map[key] = value
            self._usage += size
            while self._usage > self._capacity:
                _, evicted = self._map.popitem(last=False)
                self._usage -= len(evicted)

    def erase_file(self, file_number):
        """Drops every block of one table (after it is deleted)."""
        with self._lock:
            doomed = [k for k in self._map if k[0] == file_number]
            for k in doomed:
                self._usage -= len(self._map.pop(k))
        return len(doomed)

    def clear(self):
        with self._lock:
            self._map.clear()
            self._usage = 0

    def hit_rate(self):
        """hits / (hits + misses), 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __repr__(self):
        return (f"BlockCache(capacity={self._capacity}, usage={self._usage}, "
                f"entries={len(self._map)}, hits={self.hits}, misses={self.misses})")
