"""Handles: the Python objects that stand for objects in the image.

A handle holds its image, the image's native Heap and an address; there is at
most one live handle per address (Image keeps a weak cache), so ``is`` is the
image's identity.  Handles compare and hash by identity, like the objects
they stand for: compare contents with ``list(v) == [...]`` or ``dict(t) == {...}``.

The fields and the hottest protocols (len, v[i], t[key]) are C: the base
types HandleBase, VectorBase and TableBase in native/objmem.c.  Every
mutating method runs in the image's current transaction, or in one of its
own that commits before the method returns (autocommit).  A handle whose
object is gone (made in a transaction that rolled back, or its image closed)
has its class switched to a stale class, whose every use raises StaleHandle:
the check costs nothing on the normal path.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping, MutableSequence
from typing import Any

import zstandard

from image._errors import CorruptObject, StaleHandle
from native._fastpath import HandleBase, TableBase, VectorBase

_MISSING = object()
# Items fetched per native call when iterating: big enough to amortise the
# call, small enough that a loop that breaks early reads little.
_ITER_CHUNK = 256


class Handle(HandleBase):
    """An object in the image.  Subclasses speak the Python protocols.  The
    fields _img, _heap and _addr live in the C base (native/objmem.c)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return hash(self._addr)

    @property
    def address(self) -> int:
        """The object's logical address in the image (its identity)."""
        return self._addr

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {self._addr:#x}>"

    def __reduce__(self):
        raise TypeError("a handle cannot be pickled: store it in the image instead")


def _mutator(method):
    """Runs method in the current transaction, or in its own (autocommit)."""
    def run(self, *args, **kwargs):
        img = self._img
        if img._depth:
            return method(self, *args, **kwargs)
        return img._autocommit(method, self, args, kwargs)
    run.__name__ = method.__name__
    run.__doc__ = method.__doc__
    return run


class Vector(VectorBase, Handle, MutableSequence):
    """A growable vector (from a list): len, indexing, slicing, iteration,
    append, insert, del, index, count, extend, pop, remove, clear.  len(v)
    and v[i] are VectorBase's, in C; a slice comes here."""

    __slots__ = ()
    __eq__ = Handle.__eq__
    __hash__ = Handle.__hash__

    def _subscript(self, index):
        if type(index) is slice:
            start, stop, step = index.indices(self._heap.vec_len(self._addr))
            if step == 1:
                return self._heap.vec_slice(self._addr, start, max(start, stop))
            return [self._heap.vec_get(self._addr, i) for i in range(start, stop, step)]
        return self._heap.vec_get(self._addr, index)

    @_mutator
    def __setitem__(self, index, value) -> None:
        if type(index) is not slice:
            self._heap.vec_set(self._addr, index, value)
            return
        values = list(value)
        start, stop, step = index.indices(self._heap.vec_len(self._addr))
        if step != 1:
            targets = range(start, stop, step)
            if len(targets) != len(values):
                raise ValueError(f"attempt to assign sequence of size {len(values)} "
                                 f"to extended slice of size {len(targets)}")
            for i, v in zip(targets, values):
                self._heap.vec_set(self._addr, i, v)
            return
        for _ in range(max(0, stop - start)):
            self._heap.vec_delete(self._addr, start)
        for offset, v in enumerate(values):
            self._heap.vec_insert(self._addr, start + offset, v)

    @_mutator
    def __delitem__(self, index) -> None:
        if type(index) is not slice:
            self._heap.vec_delete(self._addr, index)
            return
        targets = range(*index.indices(self._heap.vec_len(self._addr)))
        for i in sorted(targets, reverse=True):
            self._heap.vec_delete(self._addr, i)

    @_mutator
    def insert(self, index: int, value: Any) -> None:
        self._heap.vec_insert(self._addr, index, value)

    @_mutator
    def append(self, value: Any) -> None:
        self._heap.vec_append(self._addr, value)

    @_mutator
    def extend(self, values: Iterable) -> None:
        if values is self:
            values = list(values)
        for v in values:
            self._heap.vec_append(self._addr, v)

    @_mutator
    def pop(self, index: int = -1) -> Any:
        value = self._heap.vec_get(self._addr, index)
        self._heap.vec_delete(self._addr, index)
        return value

    @_mutator
    def remove(self, value: Any) -> None:
        del self[self.index(value)]

    @_mutator
    def clear(self) -> None:
        self._heap.vec_clear(self._addr)

    def __iadd__(self, values: Iterable) -> Vector:
        self.extend(values)
        return self

    def __iter__(self) -> Iterator:
        heap, addr, start = self._heap, self._addr, 0
        while True:
            chunk = heap.vec_slice(addr, start, start + _ITER_CHUNK)
            if not chunk:
                return
            yield from chunk
            start += len(chunk)

    def __repr__(self) -> str:
        return f"<Vector len={len(self)} at {self._addr:#x}>"


class Table(TableBase, Handle, MutableMapping):
    """A persistent table (from a dict): a mutable mapping in insertion order,
    whose keys are any hashable image values.  len(t) and t[key] are
    TableBase's, in C."""

    __slots__ = ()
    __eq__ = Handle.__eq__
    __hash__ = Handle.__hash__

    def get(self, key, default=None):
        return self._heap.tab_get(self._addr, key, default)

    def __contains__(self, key) -> bool:
        return self._heap.tab_get(self._addr, key, _MISSING) is not _MISSING

    @_mutator
    def __setitem__(self, key, value) -> None:
        self._heap.tab_set(self._addr, key, value)

    @_mutator
    def __delitem__(self, key) -> None:
        if not self._heap.tab_del(self._addr, key):
            raise KeyError(key)

    def _entries(self, what: int) -> Iterator:
        heap, addr, pos = self._heap, self._addr, 0
        while True:
            pos, chunk = heap.tab_items(addr, what, pos, _ITER_CHUNK)
            if not chunk:
                return
            yield from chunk

    def __iter__(self) -> Iterator:
        return self._entries(0)

    def values(self):
        return list(self._entries(1))

    def items(self):
        return list(self._entries(2))

    @_mutator
    def clear(self) -> None:
        self._heap.tab_clear(self._addr)

    @_mutator
    def update(self, *args, **kwargs) -> None:
        MutableMapping.update(self, *args, **kwargs)

    @_mutator
    def pop(self, key, default=_MISSING):
        value = self._heap.tab_get(self._addr, key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self._heap.tab_del(self._addr, key)
        return value

    @_mutator
    def popitem(self):
        items = self.items()
        if not items:
            raise KeyError("popitem(): table is empty")
        key, value = items[-1]
        self._heap.tab_del(self._addr, key)
        return key, value

    @_mutator
    def setdefault(self, key, default=None):
        value = self._heap.tab_get(self._addr, key, _MISSING)
        if value is _MISSING:
            self._heap.tab_set(self._addr, key, default)
            return self._heap.tab_get(self._addr, key, None)
        return value

    def __repr__(self) -> str:
        return f"<Table len={len(self)} at {self._addr:#x}>"


_B_HASH, _B_DATA, _B_LENGTH = 0, 1, 2
# Decompressed a piece at a time, so a damaged frame that claims a huge size
# costs no more memory than the blob's recorded length.
_BLOB_READ_CHUNK = 1 << 20
_MAX_LENGTH = 1 << 60


class Blob(Handle):
    """A content-addressed, zstd-compressed immutable byte string."""

    __slots__ = ()

    @property
    def hash(self) -> bytes:
        """The keyed BLAKE2b-256 of the contents: the capability to read it."""
        digest = self._heap.slot(self._addr, _B_HASH)
        if type(digest) is not bytes or len(digest) != 32:
            raise self._damaged("its hash slot holds no 32-byte hash")
        return digest

    def __len__(self) -> int:
        length = self._heap.slot(self._addr, _B_LENGTH)
        if type(length) is not int or not 0 <= length < _MAX_LENGTH:
            raise self._damaged(f"its length slot holds {length!r}")
        return length

    def read(self) -> bytes:
        """The contents."""
        length = len(self)
        packed = self._heap.slot(self._addr, _B_DATA)
        if type(packed) is not bytes:
            raise self._damaged("its data slot holds no byte string")
        parts, got = [], 0
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(packed)
            while got <= length:
                part = reader.read(min(_BLOB_READ_CHUNK, length - got + 1))
                if not part:
                    break
                parts.append(part)
                got += len(part)
        except zstandard.ZstdError as exc:
            raise self._damaged(f"its data does not decompress ({exc})") from None
        if got != length:
            raise self._damaged(f"it holds {'more than ' if got > length else ''}{got} bytes, "
                                f"its length slot says {length}")
        return b"".join(parts)

    def _damaged(self, why: str) -> CorruptObject:
        return CorruptObject(f"object at {self._addr:#x}: a damaged blob: {why}", self._addr)

    def __repr__(self) -> str:
        return f"<Blob {len(self)} bytes {self.hash.hex()[:16]} at {self._addr:#x}>"


class Object(Handle):
    """An object of a class the Python API has no protocol for: a user-defined
    class (img.define_class), or the Scheme layer's pairs, symbols, records.
    len(obj) is its slot count; obj[i] reads slot i, obj[i] = v writes it."""

    __slots__ = ()

    @property
    def class_index(self) -> int:
        return self._heap.class_of(self._addr)

    def __len__(self) -> int:
        return self._heap.size(self._addr)

    def __getitem__(self, index: int):
        return self._heap.slot(self._addr, _slot_index(self, index))

    @_mutator
    def __setitem__(self, index: int, value) -> None:
        self._heap.set_slot(self._addr, _slot_index(self, index), value)

    def __repr__(self) -> str:
        return f"<Object of class {self.class_index} at {self._addr:#x}>"


def _slot_index(obj: Object, index: int) -> int:
    index = index.__index__()
    if index < 0:
        index += len(obj)
    if index < 0:
        raise IndexError("slot index out of range")
    return index


class Special:
    """An immediate value with no Python counterpart: a character, the empty
    list, the end-of-file object (the Scheme layer makes them)."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: int) -> None:
        self.kind = kind
        self.value = value

    def __eq__(self, other: object) -> bool:
        return (type(other) is Special and other.kind == self.kind
                and other.value == self.value)

    def __hash__(self) -> int:
        return hash((self.kind, self.value))

    def __repr__(self) -> str:
        return f"Special({self.kind!r}, {self.value!r})"


class _StaleMixin:
    """What a handle becomes when its object is gone: every use raises.
    There is one stale class per C base (CPython lets __class__ change only
    between classes on the same base)."""

    __slots__ = ()

    def _gone(self, *args, **kwargs):
        raise StaleHandle(f"the object at {self._addr:#x} is gone: it was made in a "
                          f"transaction that rolled back, or its image was closed")

    __len__ = __getitem__ = __setitem__ = __delitem__ = __iter__ = __contains__ = _gone
    append = insert = extend = pop = remove = clear = index = count = _gone
    get = keys = values = items = update = setdefault = popitem = read = _gone

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return hash(self._addr)

    def __getattr__(self, name: str):
        self._gone()

    def __repr__(self) -> str:
        return f"<stale handle at {self._addr:#x}>"


class _Stale(_StaleMixin, Handle):
    __slots__ = ()


class _StaleVector(_StaleMixin, VectorBase):
    __slots__ = ()


class _StaleTable(_StaleMixin, TableBase):
    __slots__ = ()


def is_stale(handle: HandleBase) -> bool:
    return isinstance(handle, _StaleMixin)


def make_stale(handle: HandleBase) -> None:
    """Turns a live handle into a stale one, in place."""
    # A handle class of the layer above names its own stale class (it may add
    # slots, and CPython switches only between classes of one layout).
    handle.__class__ = (getattr(type(handle), "stale_class", None)
                        or (_StaleVector if isinstance(handle, VectorBase)
                            else _StaleTable if isinstance(handle, TableBase) else _Stale))
    handle._heap = None   # so that storing it raises StaleHandle, not a dangling reference
