"""The typed boundary around the C core: owners for its objects, and the one
place where its status codes become Python exceptions.

``NativeStore`` owns an ``ic_store`` (mapped segments), ``Tree`` an ``ic_tree``
(one state of the page table), ``Dirty`` an ``ic_dirty`` (uncommitted pages).
Their C pointers are freed by ``close()`` or, failing that, by a weakref
finaliser; a Tree keeps its NativeStore alive.
"""
from __future__ import annotations

import weakref
from typing import NewType

from native import ffi, lib
from pager._errors import CorruptImage, PagerError

ENTRY_SIZE = 32
Loc = NewType("Loc", int)   # (segment << 32) | slot


def make_loc(segno: int, slot: int) -> Loc:
    return Loc(segno << 32 | slot)


def hash64(data: bytes | bytearray | memoryview, seed: int) -> int:
    return lib.ic_hash(ffi.from_buffer(data), len(data), seed)


def raise_status(st_ptr, code: int) -> None:
    """Turn a non-zero ic_status into the matching exception."""
    message = ffi.string(lib.ic_errmsg(st_ptr)).decode("utf-8", "replace") or f"C core error {code}"
    if code in (lib.IC_CORRUPT, lib.IC_MISSING):
        raise CorruptImage(message)
    if code == lib.IC_RANGE:
        raise ValueError(message)
    if code == lib.IC_NOMEM:
        raise MemoryError(message)
    if code == lib.IC_IO:
        raise OSError(message)
    raise PagerError(message)


class NativeStore:
    """An ic_store: the segments of one image, mapped read-only."""

    def __init__(self, page_size: int, salt: int, image_id: bytes) -> None:
        ptr = lib.ic_store_new(page_size, salt, image_id)
        if ptr == ffi.NULL:
            raise ValueError(f"page size {page_size} is not a power of two from 1 KiB to 64 KiB")
        self.ptr = ptr
        self.page_size = page_size
        self._finalizer = weakref.finalize(self, lib.ic_store_free, ptr)

    def check(self, code: int) -> None:
        if code:
            raise_status(self.ptr, code)

    def map(self, segno: int, fd: int, length: int) -> None:
        self.check(lib.ic_store_map(self.ptr, segno, fd, length))

    def attach(self, dirfd: int, segno: int) -> int | None:
        """Open, check and map segment segno of the directory dirfd (core.c
        ic_store_attach); its size, or None if it could not be (nothing mapped)."""
        size = ffi.new("uint64_t *")
        if lib.ic_store_attach(self.ptr, dirfd, segno, size):
            return None
        return size[0]

    def set_limit(self, segno: int, limit: int) -> None:
        """Where segno's log ends: no location at or past it will be used."""
        lib.ic_store_set_limit(self.ptr, segno, limit)

    def unmap(self, segno: int) -> None:
        lib.ic_store_unmap(self.ptr, segno)

    def segment(self, segno: int) -> memoryview | None:
        """The mapped bytes of a segment (read-only), or None if not mapped."""
        length = ffi.new("uint64_t *")
        base = lib.ic_store_segment(self.ptr, segno, length)
        if base == ffi.NULL:
            return None
        return memoryview(ffi.buffer(base, length[0])).toreadonly()

    def verify_slot(self, loc: int, page_sum: int, page_no: int, commit: int) -> None:
        self.check(lib.ic_verify_slot(self.ptr, loc, page_sum, page_no, commit))

    def close(self) -> None:
        self._finalizer()


class Tree:
    """An ic_tree: one state of the logical-to-physical page table."""

    def __init__(self, store: NativeStore, root_loc: int = 0, root_sum: int = 0,
                 depth: int = 0) -> None:
        root = ffi.new("uint8_t[]", ENTRY_SIZE)
        ffi.memmove(root, root_loc.to_bytes(8, "little") + root_sum.to_bytes(8, "little"), 16)
        ptr = lib.ic_tree_new(store.ptr, root, depth)
        if ptr == ffi.NULL:
            raise CorruptImage(f"page-table depth {depth} is out of range")
        self.ptr = ptr
        self.store = store
        self._finalizer = weakref.finalize(self, lib.ic_tree_free, ptr)

    def apply(self, pairs: bytes, first_loc: int, commit: int, keep_olds: bool = False):
        n = len(pairs) // 16
        olds = ffi.new("uint8_t[]", ENTRY_SIZE * n) if keep_olds and n else ffi.NULL
        self.store.check(lib.ic_tree_apply(self.ptr, n, ffi.from_buffer(pairs), first_loc,
                                           commit, olds))
        return olds

    def apply_freed(self, freed: bytes, commit: int, keep_olds: bool = False):
        n = len(freed) // 8
        olds = ffi.new("uint8_t[]", ENTRY_SIZE * n) if keep_olds and n else ffi.NULL
        self.store.check(lib.ic_tree_apply_freed(self.ptr, n, ffi.from_buffer(freed), commit,
                                                 olds))
        return olds

    def restore(self, keys: bytes, stride: int, olds) -> None:
        if olds != ffi.NULL:
            self.store.check(lib.ic_tree_restore(self.ptr, len(keys) // stride,
                                                 ffi.from_buffer(keys), stride, olds))

    @property
    def depth(self) -> int:
        return lib.ic_tree_depth(self.ptr)

    def entry(self, page_no: int) -> tuple[int, int, int]:
        """(loc, sum, commit) of a logical page; loc 0 when never written."""
        out = ffi.new("uint8_t[]", ENTRY_SIZE)
        self.store.check(lib.ic_tree_get(self.ptr, page_no, out))
        raw = bytes(ffi.buffer(out, 24))
        return tuple(int.from_bytes(raw[i:i + 8], "little") for i in (0, 8, 16))

    def usage(self) -> dict[int, int]:
        """Live slots per segment, for segments that hold any."""
        out, s = {}, lib.ic_tree_usage_next(self.ptr, 0)
        while s != 0xFFFFFFFF:
            out[s] = lib.ic_tree_usage(self.ptr, s)
            s = lib.ic_tree_usage_next(self.ptr, s + 1)
        return out

    def set_usage(self, usage: list[tuple[int, int]]) -> None:
        for segno, live in usage:
            if not 0 < segno < 1 << 24:
                raise CorruptImage(f"segment usage names segment {segno}, which cannot exist")
            self.store.check(lib.ic_tree_set_usage(self.ptr, segno, live))

    def check(self) -> tuple[int, int]:
        """Walk every node and page, re-verifying checksums; (pages, nodes)."""
        pages, nodes = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        self.store.check(lib.ic_tree_check(self.ptr, pages, nodes))
        return pages[0], nodes[0]

    def close(self) -> None:
        self._finalizer()


class Dirty:
    """An ic_dirty: the writer's uncommitted page buffers."""

    def __init__(self, page_size: int) -> None:
        ptr = lib.ic_dirty_new(page_size)
        if ptr == ffi.NULL:
            raise MemoryError("cannot allocate the dirty-page table")
        self.ptr = ptr
        self._finalizer = weakref.finalize(self, lib.ic_dirty_free, ptr)

    def __len__(self) -> int:
        return lib.ic_dirty_count(self.ptr)

    def clear(self) -> None:
        lib.ic_dirty_clear(self.ptr)

    def close(self) -> None:
        self._finalizer()
