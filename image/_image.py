"""Image: one object memory over one page store, its transactions, its
collector and its blobs.  The module docstring of image/ states the rules."""
from __future__ import annotations

import enum
import hashlib
import os
import weakref
from typing import Any

import zstandard

from image._errors import CorruptObject, ImageError, ReadOnlyImage, StaleHandle
from image._handles import Blob, Object, Special, Table, Vector, is_stale, make_stale
from native import _fastpath
from pager import CorruptImage, PageStore, PagerError

LAYOUT = _fastpath.layout()
_fastpath.set_errors(CorruptObject, StaleHandle)
_HANDLE_CLASSES = {LAYOUT["C_VECTOR"]: Vector, LAYOUT["C_TABLE"]: Table,
                   LAYOUT["C_BLOB"]: Blob}
_MISSING = object()
# zstd level 3: its default, about 300 MB/s here, within a few percent of the
# ratio of levels twice as slow; bodies are written once and read often.
_BLOB_LEVEL = 3
_BLOB_KEY_WORDS = 4   # a 256-bit key in meta words M_BLOB_KEY..+3


def open(path: str | os.PathLike, readonly: bool = False, *,  # noqa: A001 - the API's name
         page_size: int = 4096) -> Image:
    """Opens the image at path; a writer creates it when it is missing."""
    path = os.fspath(path)
    if readonly or os.path.exists(path):
        store = PageStore.open(path, readonly=readonly)
    else:
        store = PageStore.create(path, page_size=page_size)
    try:
        return Image(store)
    except BaseException:
        store.close()
        raise


# How the layer above (vm: Scheme) reads its own values back: its handle
# classes for its object classes (pair, mutable string, closure, ...), and a
# maker for each of its immediates (char, nil, eof) and for symbols.
_SPECIAL_MAKERS: dict[str, Any] = {}


_LIVE_IMAGES: "weakref.WeakSet[Image]" = weakref.WeakSet()

# What the layers above answer for an image (the snapshots layer: snapshots,
# snapshot): the image does not import them, they register here.
_PROVIDED: dict[str, Any] = {}


def provide(name: str, fn: Any) -> None:
    """Registers fn(img, ...) as the answer to img.<name>(...)."""
    _PROVIDED[name] = fn


def register_values(handle_classes: dict[int, type], specials: dict[str, Any]) -> None:
    """Installs the layer above's readers for the system classes it owns
    (pair, mutable string, closure: the same index in every image): handle
    classes by class index (each a subclass of the C handle base), and makers
    by special kind ("char", "nil", "eof", "symbol").  Process-wide; a user
    class's handle class is per image (Image.set_handle_class)."""
    for index in handle_classes:
        if index >= LAYOUT["N_SYSTEM_CLASSES"]:
            raise ValueError(f"class {index} is a user class: use Image.set_handle_class")
    _HANDLE_CLASSES.update(handle_classes)
    for img in list(_LIVE_IMAGES):
        img._handle_classes.update(handle_classes)
    _SPECIAL_MAKERS.update(specials)


def _make_special(kind: str, value: Any) -> Any:
    maker = _SPECIAL_MAKERS.get(kind)
    return maker(value) if maker is not None else Special(kind, value)


_META_BYTES = LAYOUT["META_WORDS"] * 8
_META_MAGIC = b"imagoOM1"   # the first meta word (objmem.c's OM_MAGIC), as bytes


def _carries_meta(record_meta: bytes) -> bool:
    return len(record_meta) >= _META_BYTES and record_meta.startswith(_META_MAGIC)


def meta_block_of(record_meta: bytes) -> bytes:
    """The meta words a commit record carries (b"" when it carries none)."""
    return record_meta[:_META_BYTES] if _carries_meta(record_meta) else b""


def commit_note(record_meta: bytes) -> bytes:
    """The transaction's note, which a commit record carries after the meta words."""
    return record_meta[_META_BYTES:] if _carries_meta(record_meta) else record_meta


class _Transaction:
    """The context manager of Image.transaction(): begin, then commit or roll back."""

    __slots__ = ("img", "note")

    def __init__(self, img: Image, note: bytes) -> None:
        self.img = img
        self.note = note

    def __enter__(self) -> Image:
        self.img._begin()
        return self.img

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.img._end(self.note)
        else:
            self.img._abort()
        return False


class Image:
    """A persistent object memory.  See image/__init__ for its rules."""

    def __init__(self, store: PageStore) -> None:
        self._store = store
        self.readonly = store.readonly
        # Handle classes by class index: the system's, and this image's own
        # for its user classes (set_handle_class).
        self._handle_classes = dict(_HANDLE_CLASSES)
        _LIVE_IMAGES.add(self)
        # The heap makes handles (one per address, cached weakly) in C.
        self._heap = _fastpath.Heap(store.page_reader, self, _fastpath.HandleBase,
                                    self._handle_classes, Object, _make_special)
        self._depth = 0          # transaction nesting; 0: autocommit, >1: savepoints
        self.gc_stress = bool(os.environ.get("IMAGO_GC_STRESS"))
        self._load_meta()
        if not self._heap.reload():
            if self.readonly or store.head > 0:
                raise CorruptImage(f"{store.path if hasattr(store, 'path') else 'the image'} "
                                   "holds no object memory (its newest commit carries no imago meta words)")
            self._format()
        self._blob_key = b"".join(self._heap.meta(LAYOUT["M_BLOB_KEY"] + i).to_bytes(8, "little")
                                  for i in range(_BLOB_KEY_WORDS))

    def _format(self) -> None:
        """Lays out an empty object memory: meta words, root, class table,
        symbol table, blob index; one commit."""
        heap = self._heap
        heap.format(int.from_bytes(os.urandom(8), "little"))
        key = os.urandom(8 * _BLOB_KEY_WORDS)
        for i in range(_BLOB_KEY_WORDS):
            heap.set_meta(LAYOUT["M_BLOB_KEY"] + i, int.from_bytes(key[8 * i:8 * i + 8], "little"))
        classes = [(name, "system") for name in LAYOUT["classes"]]
        for slot, value in (("M_ROOT", {}), ("M_CLASSES", classes), ("M_SYMBOLS", {}),
                            ("M_BLOBS", {})):
            heap.set_meta(LAYOUT[slot], heap.encode(value))
        self._commit(b"image: formatted")

    # -- handles -------------------------------------------------------------

    @property
    def system(self) -> Table:
        """The layers' own table (the Scheme layer's sources, journal and
        history), beside the root; made on first use."""
        w = self._heap.meta(LAYOUT["M_SYSTEM"])
        if not w:
            if self.readonly:
                return {}
            with self.transaction():
                w = self._heap.encode({})
                self._heap.set_meta(LAYOUT["M_SYSTEM"], w)
        return self._heap.decode(w)

    @property
    def changed(self) -> bool:
        """Whether the running transaction has changed anything yet."""
        return bool(self._store.dirty_pages) or self._heap.meta_block() != self._committed_meta

    def set_encode_hook(self, hook) -> None:
        """How values of the layer above are stored (native/objmem.c, "the encode hook")."""
        self._heap.set_encode_hook(hook)

    def adopt(self, value: Any, address: int) -> None:
        """value (of a handle class, fields unset) becomes the handle of address."""
        self._heap.adopt(value, address)

    @property
    def root(self) -> Table:
        """The persistent root table: everything reachable from it persists."""
        root = self._heap.decode(self._heap.meta(LAYOUT["M_ROOT"]))
        if not isinstance(root, Table):
            raise CorruptObject(f"object at 0x0: the image's root is {type(root).__name__}, "
                                "not a table", 0)
        return root

    # -- transactions --------------------------------------------------------

    def transaction(self, note: str | bytes = b"") -> _Transaction:
        """Many changes, one atomic durable commit; an exception rolls back.
        A nested transaction is a savepoint: an exception rolls back only
        what it did, and its changes commit with the outermost one."""
        if isinstance(note, str):
            note = note.encode()
        return _Transaction(self, note)

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def _begin(self) -> None:
        if self.readonly:
            raise ReadOnlyImage("this image was opened read-only")
        if self._depth == 0:
            self._heap.txn_begin()
        else:
            self._heap.savepoint()
        self._depth += 1

    def _autocommit(self, method, handle, args: tuple, kwargs: dict) -> Any:
        """method(handle, *args, **kwargs) as a transaction of its own: what
        `with self.transaction():` does, in fewer frames, for the mutation
        every autocommitted handle method makes (image/_handles.py)."""
        if self.readonly:
            raise ReadOnlyImage("this image was opened read-only")
        self._heap.txn_begin()
        self._depth = 1
        try:
            result = method(handle, *args, **kwargs)
        except BaseException:
            self._depth = 0
            self._rollback()
            raise
        self._end(b"")
        return result

    def _end(self, note: bytes) -> None:
        self._depth -= 1
        if self._depth:
            self._heap.release_savepoint()
            return
        if self.gc_stress and self._changed():
            self._depth += 1
            try:
                self._collect()
            except BaseException:
                self._depth -= 1
                self._rollback()
                raise
            self._depth -= 1
        head = self._store.head
        try:
            self._commit(note)
        except BaseException:
            if self._store.head == head:
                self._rollback()
                raise
            # The commit is durable, and the store caught up with it before an
            # interruption (Ctrl-C) surfaced (pager: _catch_up): the
            # transaction stands, and the interruption goes on up.
            self._committed_meta = meta_block_of(self._store.head_meta)
            self._heap.txn_end()
            raise
        self._heap.txn_end()

    def _commit(self, note: bytes) -> None:
        """One durable commit; its record carries the meta words (objmem.c,
        "the meta page") ahead of the note.  A transaction that changed
        nothing makes no commit (an expression typed at the REPL costs no sync)."""
        if not self._changed():
            return
        block = self._heap.meta_block()
        self._store.commit(block + note if note else block)
        self._committed_meta = block

    def _changed(self) -> bool:
        """Whether the open transaction changed anything: a page, or a meta word.
        (Under gc_stress, collecting a transaction that changed nothing would
        itself make a change, and so a commit an expression must not make.)"""
        return bool(self._store.dirty_pages) or self._heap.meta_block() != self._committed_meta

    def _load_meta(self) -> None:
        """The meta words of the commit the store shows.  Every commit of an
        object memory carries them; a store whose newest commit does not (a
        new store, or one a tool committed to beneath the image) holds none,
        and reload() says so."""
        self._committed_meta = meta_block_of(self._store.head_meta)
        self._heap.load_meta(self._committed_meta)

    def _abort(self) -> None:
        self._depth -= 1
        if not self._depth:
            self._rollback()
            return
        try:
            stale = self._heap.rollback_savepoint()
        except BaseException:
            # The savepoint's bytes could not be put back: the enclosing
            # transaction cannot be trusted, so it rolls back whole.
            self._depth = 0
            self._rollback()
            raise
        for handle in stale:
            self._heap.forget_handle(handle._addr)
            make_stale(handle)

    def _rollback(self) -> None:
        """Drops every change since the transaction began; handles of objects
        made in it go stale."""
        for handle in self._heap.txn_end():
            self._heap.forget_handle(handle._addr)
            make_stale(handle)
        try:
            self._store.rollback()
            self._load_meta()
            self._heap.reload()
        except PagerError:
            pass   # the store failed (terminal): nothing is left to roll back

    # -- classes ---------------------------------------------------------------

    def define_class(self, name: str, fields: tuple[str, ...] = ()) -> int:
        """Adds a class of pointer objects to the class table; returns its
        index (what the Scheme layer's record types are made of)."""
        fields = tuple(str(f) for f in fields)
        with self.transaction():
            table = self._heap.decode(self._heap.meta(LAYOUT["M_CLASSES"]))
            index = len(table)
            table.append((str(name), "record", fields))
            self._heap.set_meta(LAYOUT["M_NCLASSES"], index + 1)
        return index

    def class_index(self, name: str, fields: tuple[str, ...] = ()) -> int:
        """The index of the class of that name and fields, defined if the
        image has none yet (a record type defined again in a later session
        finds the class of its earlier instances)."""
        fields = tuple(str(f) for f in fields)
        for index, entry in enumerate(self._heap.decode(self._heap.meta(LAYOUT["M_CLASSES"]))):
            if tuple(entry) == (str(name), "record", fields):
                return index
        if self.readonly:
            raise ReadOnlyImage(f"this image has no class {name} and was opened read-only")
        return self.define_class(name, fields)

    def set_handle_class(self, index: int, cls: type) -> None:
        """Objects of user class index read back as instances of cls (a
        subclass of the C handle base) in this image."""
        if index < LAYOUT["N_SYSTEM_CLASSES"]:
            raise ValueError(f"class {index} is a system class")
        self._handle_classes[index] = cls

    def class_info(self, index: int) -> tuple:
        """(name, kind, fields) of a class."""
        return tuple(self._heap.decode(self._heap.meta(LAYOUT["M_CLASSES"]))[index])

    def new(self, class_index: int, values: list) -> Object:
        """A new object of a defined class holding values; reachable only once stored."""
        with self.transaction():
            return self._heap.decode(self._heap.new_object(class_index, list(values)))

    # -- blobs ---------------------------------------------------------------

    def blob(self, data: bytes) -> Blob:
        """Stores data once, by keyed hash, zstd-compressed."""
        data = bytes(data)
        digest = hashlib.blake2b(data, key=self._blob_key, digest_size=32).digest()
        index = self._heap.meta(LAYOUT["M_BLOBS"])
        with self.transaction():
            found = self._heap.tab_get(index, digest, _MISSING)
            if found is not _MISSING:
                return found
            packed = zstandard.ZstdCompressor(level=_BLOB_LEVEL).compress(data)
            addr = self._heap.new_object(LAYOUT["C_BLOB"], [digest, packed, len(data)])
            blob = self._heap.decode(addr)
            self._heap.tab_set(index, digest, blob)
        return blob

    def blob_by_hash(self, digest: bytes) -> Blob | None:
        """The blob with this hash, if the image holds it."""
        return self._heap.tab_get(self._heap.meta(LAYOUT["M_BLOBS"]), bytes(digest), None)

    # -- the collector -------------------------------------------------------

    def gc(self) -> dict:
        """Collects unreachable objects; returns {objects, bytes, pages} freed."""
        with self.transaction(b"image: gc"):
            return self._collect()

    def _collect(self) -> dict:
        collection = Collection(self)
        while collection.phase is not Phase.DONE:
            collection.step()
        return collection.result

    # -- the rest ----------------------------------------------------------------

    def check(self) -> dict:
        """Verifies the heap: headers, sizes, every reference, the free lists
        and the accounting, then every blob's length and keyed hash.  Raises
        CorruptObject naming the address."""
        stats = self._heap.check()
        stats["blobs"] = self._check_blobs()
        return stats

    def _check_blobs(self) -> int:
        index = self._heap.decode(self._heap.meta(LAYOUT["M_BLOBS"]))
        count = 0
        for digest, blob in index.items():
            if not isinstance(blob, Blob):
                raise CorruptObject(f"object at {index.address:#x}: the blob index holds "
                                    f"{type(blob).__name__}", index.address)
            data = blob.read()
            if blob.hash != digest or digest != hashlib.blake2b(
                    data, key=self._blob_key, digest_size=32).digest():
                raise CorruptObject(f"object at {blob.address:#x}: a blob whose contents "
                                    "do not match its hash", blob.address)
            count += 1
        return count

    def refresh(self) -> int:
        """A read-only image moves to the newest commit; returns its number."""
        head = self._store.refresh()
        self._load_meta()
        self._heap.reload()
        return head

    @property
    def head(self) -> int:
        """The number of the commit this image is at."""
        return self._store.head

    @property
    def store(self) -> PageStore:
        """The page store under this image."""
        return self._store

    def stats(self) -> dict:
        meta = self._heap.meta
        return {"objects": meta(LAYOUT["M_OBJECTS"]), "object_bytes": 8 * meta(LAYOUT["M_OBJ_WORDS"]),
                "free_bytes": 8 * meta(LAYOUT["M_FREE_WORDS"]),
                "heap_bytes": meta(LAYOUT["M_TOP"]) - meta(LAYOUT["M_BASE"]),
                "collections": meta(LAYOUT["M_GCS"]), "commit": self._store.head}

    def rewind(self, commit: int) -> None:
        """This image goes on from an older commit (the pager's rewind): its
        state becomes that commit's, every handle goes stale, and the next
        commit continues the line from there (the later commits stay on disk
        as a branch).  Not inside a transaction."""
        if self._depth:
            raise ImageError("rewind() inside a transaction")
        if self.readonly:
            raise ReadOnlyImage("this image was opened read-only")
        view = self._store.view(commit)
        holds_memory = bool(meta_block_of(view.meta))
        view.close()
        if not holds_memory:
            raise ImageError(f"commit {commit} holds no object memory (it was made before the "
                             "image was formatted, or beneath it)")
        self._store.rewind(commit)
        for handle in self._heap.live_handles().values():
            self._heap.forget_handle(handle._addr)
            make_stale(handle)
        self._load_meta()
        self._heap.reload()

    def snapshots(self) -> list:
        """Every snapshot of this image, oldest first (the snapshots layer)."""
        return self._provided("snapshots")(self)

    def snapshot(self, label: str) -> Any:
        """Labels the current version as a snapshot (the snapshots layer)."""
        return self._provided("snapshot")(self, label)

    def _provided(self, name: str) -> Any:
        fn = _PROVIDED.get(name)
        if fn is None:
            raise ImageError(f"img.{name}() needs the snapshots layer: import snapshots")
        return fn

    @property
    def path(self) -> str:
        """The image's directory."""
        return self._store.path

    @property
    def base(self) -> int:
        """The commit this image's state is (the head, unless rewound)."""
        return self._store.base

    def at(self, commit: int) -> "Image":
        """A read-only image of an older commit, beside this one: it reads the
        pages that commit reached (no copy).  Close it when done."""
        if self._store is None:
            raise ImageError("the image is closed")
        view = self._store.view(commit)
        try:
            return Image(view)
        except BaseException:
            view.close()
            raise

    def close(self) -> None:
        """Rolls back an open transaction, closes the store; handles go stale."""
        if self._store is None:
            return
        if self._depth:
            self._depth = 0
            self._rollback()
        for handle in self._heap.live_handles().values():
            make_stale(handle)
        store, self._store = self._store, None
        store.close()

    @property
    def closed(self) -> bool:
        return self._store is None

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._store is None else f"at commit {self._store.head}"
        return f"<Image {state}{' read-only' if self.readonly else ''}>"


class Phase(enum.Enum):
    ROOTS = "roots"      # gather the roots: the live handles (the meta roots are in C)
    MARK = "mark"        # mark everything reachable into the side bitmap
    SWEEP = "sweep"      # free the unmarked, rebuild the free lists
    RELEASE = "release"  # drop pages that hold nothing from the page table
    DONE = "done"


class Collection:
    """One collection, in phases; step() runs the next phase.  Runs inside a
    transaction: nothing may allocate between MARK and SWEEP."""

    def __init__(self, img: Image) -> None:
        self.img = img
        self.phase = Phase.ROOTS
        self.roots: list[int] = []
        self.result: dict[str, Any] = {}

    def step(self) -> None:
        img, heap = self.img, self.img._heap
        if self.phase is Phase.ROOTS:
            self.roots = [addr for addr, h in heap.live_handles().items() if not is_stale(h)]
            self.phase = Phase.MARK
        elif self.phase is Phase.MARK:
            heap.mark(self.roots)
            self.phase = Phase.SWEEP
        elif self.phase is Phase.SWEEP:
            self.result = heap.sweep()
            self.phase = Phase.RELEASE
        elif self.phase is Phase.RELEASE:
            ranges = self.result.pop("pages")
            released = 0
            for first, count in ranges:
                for page in range(first, first + count):
                    heap.preserve_page(page)   # a savepoint may want it back
                    img._store.free(page)
                released += count
            self.result["pages"] = released
            self.phase = Phase.DONE
        else:
            raise ImageError("the collection is done")
