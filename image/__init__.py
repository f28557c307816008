"""image: the object memory.  Persistent objects over the page store (pager/),
with transactions, a collector and content-addressed blobs.

It owns what the bytes of an image mean: tagged words, object headers, the
allocator, the persistent types, promotion of Python values, handles,
transactions, the collector and blobs.  The per-word and per-object work is
C (native/objmem.c, whose header comment has the word and header layout as
tables); this package holds the policy.

Public API::

    img = image.open(path, readonly=False)   # a writer creates a missing image
    img.root                                 # the root table (a Table handle)
    with img.transaction(): ...              # one atomic, durable commit
    img.blob(data) -> Blob                   # Blob.read(), Blob.hash, len(blob)
    img.gc() -> {objects, bytes, pages}      # what the collection freed
    img.check() -> statistics                # the heap verifier
    img.refresh()                            # read-only images: move to the newest commit
    img.close()
    handles: Vector, Table, Blob, Object; values Special (chars, '(), eof)
    errors: ImageError > CorruptObject (.address), StaleHandle, ReadOnlyImage;
            and the pager's errors

VALUES.  None, bool, int (any size), float, str and bytes are values: stored
by copy, read back as equal Python values.  A list becomes a growable Vector,
a dict a Table, a tuple a fixed vector read back as a tuple; storing a plain
container copies it in (its transitive closure, sharing and cycles kept);
storing a handle stores a reference to its object (identity holds).  Other
Python objects raise TypeError naming their type.  Handles compare by
identity; compare contents with list(v) or dict(t).

PERSISTENCE BY REACHABILITY.  Python values computed in a program live on
the Python heap, which is the nursery: nothing reaches the image until it is
stored into an image object.  Objects that nothing reaches from the roots
(root table, class table, symbol table, actor registry) or from a live
handle are garbage, which gc() frees.

TRANSACTIONS, and the state of an Image:

    AUTOCOMMIT --transaction()--> IN TRANSACTION --end--> commit --> AUTOCOMMIT
                                        |  exception: rollback -----^
    any --close()--> CLOSED (every handle stale)

 1. Outside a transaction, each mutating call of a handle is a transaction of
    its own: it commits (durably) before it returns, or rolls back and raises.
 2. A transaction commits once, at the end of its outermost `with`.  An
    exception rolls back everything since it began: the dirty pages are
    dropped, handles of objects made in it go stale (StaleHandle on use), and
    the meta words are reloaded from the last commit's record (each commit
    record carries them; see native/objmem.c, "the meta page").
 3. A nested transaction is a savepoint.  An exception that leaves it rolls
    back only what it did (the heap keeps an undo log of the bytes each
    write replaces while a savepoint is open, and writes them back), and
    stales the handles of objects made in it; the enclosing transaction goes
    on.  Its changes are committed with the outermost transaction.
 4. A failed commit (the pager's CommitFailed or StoreFailed) is a rollback;
    after StoreFailed the image, like its store, refuses further work.

THREADS.  An Image belongs to one thread at a time: its transaction is per
image, not per thread, so two threads changing one image would share (and
could roll back) each other's work.  Give each thread its own read-only
Image, or serialise access.

THE COLLECTOR (Collection, in phases ROOTS, MARK, SWEEP, RELEASE) runs in a
transaction: it marks from the roots and every live handle into a side
bitmap (marking dirties no page), clears dead entries of the weak blob index,
sweeps the heap into free chunks (rebuilding the free lists and the
accounting) and drops from the page table every page that no longer holds a
live byte; vacuum then reclaims their disk.  Setting IMAGO_GC_STRESS=1 (or
img.gc_stress) collects before every commit, which shakes out stale
references in tests.  Collection runs only at such safe points: a value being
stored is not yet reachable, so collecting in the middle of storing it would
free it.

BLOBS are stored once per image by keyed BLAKE2b-256 (the key is per image,
so a hash cannot be confirmed by someone without the image), zstd-compressed.
The blob index is weak: a blob nothing else reaches is collected.

CHECKED BY img.check() (native heap_check; tests run it after collections):
the heap parses from base to top; every reference names an object header
that is not free; free chunks and free lists agree; the accounting adds up;
every vector's counts and every table's index are consistent.

OPEN QUESTIONS.  Tables keyed by Scheme
values that have no Python type yet (characters): the Scheme layer extends
key hashing when it adds them; incremental collection (a collection is one
stop-the-world pass over the heap).
"""
from image._errors import CorruptObject, ImageError, ReadOnlyImage, StaleHandle
from image._handles import Blob, Handle, Object, Special, Table, Vector
from image._image import (LAYOUT, Collection, Image, Phase, commit_note, meta_block_of, open, provide,
                          register_values)

__all__ = ["Blob", "Collection", "CorruptObject", "Handle", "Image", "ImageError", "LAYOUT",
           "Object", "Phase", "ReadOnlyImage", "Special", "StaleHandle", "Table", "Vector",
           "commit_note", "meta_block_of", "open", "provide", "register_values"]
