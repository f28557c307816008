"""Hostile object memory: seeded changes to random objects, then a fixed script of use.

test_image_corruption damages one chosen object at a time; here each seed
makes one to three changes to objects or meta words picked at random from the
template image of test_image_corruption (1 KiB pages: a few hundred mails,
2,000 numbers, 8,100 more in a vector of height 2, a blob, a small table,
free chunks), written through the page
store and committed, so that every checksum over them is valid and the damage
reaches native/objmem.c.  A change is one of:

- a random 64-bit value in a random word of an object (header, overflow word
  or payload);
- a plausible value there: a fixnum near the old one or at a bound, a pointer
  to another object, into the middle of one, past the heap or to the last
  word of the address space, EMPTY, ABSENT, another special, a short string;
- a header field (class, format, size) changed with its check bits kept, so
  the header still looks like it belongs at its address;
- a meta word of page 0 (heap top, accounting, class count, roots, bins);
- a flipped bit in the bytes of a string, bytes or bigint.

Seeds from FORGED_BASE on make forgeries instead (FORGERIES): several words
changed consistently, as a forger would, so that cheap checks pass: a full
leaf or a node grown past a page, an object relabelled as another class of
its format, a vector root or node child pointed at another vector's leaf or
node (or its own node), a table store rearranged, M_TOP moved far past the
heap with the page of its last word written.

Then SCRIPT runs: open; check(); reads (len, indexing, slicing, iteration,
table lookups and iteration, the blob); writes (append, insert, del, set,
extend, table set and del, a new blob); gc(); check(); close, reopen, check().
Each step may succeed or raise only what ALLOWED lists: the image's and the
pager's errors, KeyError, IndexError, TypeError and ValueError that the
operation itself explains (not the pager's ValueError for an address out of
its range, which means the object memory let a bad address through), and
RecursionError.  Anything else is a finding: SystemError, MemoryError,
OverflowError, AttributeError, a segfault or abort, or a seed still running
after SEED_SECONDS.

Each batch of seeds runs in a child process; several run side by side.  A
child that dies or hangs fails the test naming the seed and its changes, and
the run goes on with the next seed.  To replay seeds in this process, with
tracebacks: ``python tests/test_image_hostile.py SEED...``.
"""
from __future__ import annotations

import collections
import faulthandler
import json
import os
import random
import resource
import shutil
import sys
import threading
import time
import traceback

import pytest

import image
import test_image_corruption as corruption
from children import follow
from test_image_corruption import (ABSENT, EMPTY, FMT_BYTES, L, M64, M_BINS, N_BINS, SIZE_OVERFLOW,
                                   check_bits, fx, heap_objects, meta, short_word, unfx)
from pager import PagerError, PageStore

SEED_SECONDS = 20                     # a seed takes well under a second; one still running hangs
STALL_SECONDS = SEED_SECONDS + 30     # the parent's backstop, should faulthandler not fire
DEFAULT_SEEDS = range(0, 150)
SOAK_SEEDS = range(100_000, 103_000)
FORGED_SEEDS = range(1_000_000, 1_000_100)      # see FORGERIES
FORGED_SOAK_SEEDS = range(1_100_000, 1_102_000)
WORKERS = max(1, min(4, os.cpu_count() or 1))
CHILD_MEMORY = 4 << 30                # a child's address space: a forged size must not take the machine
ALLOWED = (image.ImageError, PagerError, KeyError, IndexError, TypeError, ValueError, RecursionError)
META_TARGETS = ("M_TOP", "M_OBJECTS", "M_OBJ_WORDS", "M_FREE_WORDS", "M_FREE_CHUNKS",
                "M_NCLASSES", "M_ROOT", "M_CLASSES", "M_SYMBOLS", "M_BLOBS", "M_BASE", "bin")


class Finding(Exception):
    """What the seed did that no allowed outcome explains; kind is one of KINDS."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# What a finding is; the tests below assert on each kind separately.
KINDS = ("MemoryError", "pager range error", "other exception", "crash", "hang")


# -- the changes -----------------------------------------------------------------------------


class Template:
    """The pristine image and its objects, read once per child."""

    def __init__(self, path: str) -> None:
        self.path = path
        with corruption.open_store(path, readonly=True) as store:
            self.objects = list(heap_objects(store))
            self.top, self.base = meta(store, L["M_TOP"]), meta(store, L["M_BASE"])
        self.by_class = collections.defaultdict(list)
        for o in self.objects:
            self.by_class[o.cls].append(o)
        self.classes = sorted(self.by_class)


def plausible(rng: random.Random, tpl: Template, old: int) -> int:
    """A value a buggy writer or a forger might leave in a word."""
    other = rng.choice(tpl.objects)
    choices = [
        lambda: fx(unfx(old) + rng.choice((-2, -1, 1, 2))) if old & 7 == 1 else fx(rng.randrange(300)),
        lambda: fx(rng.choice((0, -1, 1, 2, 3, 11, 12, 126, 127, 128, 255, 1 << 20, 10**12,
                               (1 << 60) - 1, -(1 << 60)))),
        lambda: other.addr,
        lambda: other.addr + 8 * rng.randrange(1, max(2, other.words)),
        lambda: tpl.top + 8 * rng.randrange(0, 64),
        lambda: rng.choice((0xFFFFFFFFFFFFFFF8, 0xFFFFFFFFFFFFFFF0, 8, 1 << 51, 1 << 52)),
        lambda: EMPTY,
        lambda: ABSENT,
        lambda: (rng.randrange(12) << 3) | 6,
        lambda: short_word(rng.choice((3, 5)), bytes(rng.randrange(256) for _ in range(rng.randrange(8)))),
        lambda: old ^ (1 << rng.randrange(64)),
        lambda: (old & ~7) | rng.randrange(8),
    ]
    return rng.choice(choices)() & M64


def change_word(rng, tpl: Template, store) -> str:
    cls = rng.choice(tpl.classes)
    o = rng.choice(tpl.by_class[cls])
    # header and overflow word now and then, payload words mostly
    i = 0 if rng.random() < 0.15 else rng.randrange(o.words)
    at = o.addr + 8 * i
    old = store.read_word(at)
    new = rng.getrandbits(64) if rng.random() < 0.3 else plausible(rng, tpl, old)
    store.write_word(at, new)
    return f"word {i} of the {L['classes'][cls]} at {o.addr:#x}: {old:#x} -> {new:#x}"


def change_header(rng, tpl: Template, store) -> str:
    cls = rng.choice(tpl.classes)
    o = rng.choice(tpl.by_class[cls])
    hd = store.read_word(o.addr)
    field = rng.choice(("class", "format", "size", "size"))
    if field == "class":
        new = (hd & ((1 << 44) - 1)) | (rng.choice(list(range(19)) + [31, 32, 40, (1 << 20) - 1]) << 44)
    elif field == "format":
        new = (hd & ~0xFF) | rng.randrange(16) << rng.choice((0, 4))
    else:
        size = (hd >> 8) & 0xFFFFFF
        size = rng.choice((size + rng.choice((-3, -2, -1, 1, 2, 3)), 0, 1, 2, 3, rng.randrange(1 << 24),
                           SIZE_OVERFLOW, 2 * size, size // 2)) & 0xFFFFFF
        new = (hd & ~(0xFFFFFF << 8)) | (size << 8)
    assert (new >> 32) & 0xFFF == check_bits(o.addr)
    store.write_word(o.addr, new)
    return f"header {field} of the {L['classes'][cls]} at {o.addr:#x}: {hd:#x} -> {new:#x}"


def change_meta(rng, tpl: Template, store) -> str:
    name = rng.choice(META_TARGETS)
    index = M_BINS + rng.randrange(N_BINS) if name == "bin" else L[name]
    old = meta(store, index)
    if name in ("M_TOP", "M_BASE") and rng.random() < 0.6:
        new = rng.choice((old + 8, old - 8, old + 4096, tpl.top + (1 << 20), 1 << 40, 1 << 51,
                          1 << 52, old // 2 & ~7, tpl.base))
    elif name == "M_NCLASSES" and rng.random() < 0.7:
        new = rng.choice((0, 5, 9, 10, 19, 33, 1 << 20, (1 << 20) + 1))
    elif rng.random() < 0.5:
        new = (old + rng.choice((-2, -1, 1, 2, 1 << 40))) & M64
    else:
        new = plausible(rng, tpl, old)
    store.write_word(8 * index, new)
    return f"meta word {index} ({name}): {old:#x} -> {new:#x}"


def change_bytes(rng, tpl: Template, store) -> str:
    objs = [o for o in tpl.objects if o.fmt == FMT_BYTES and o.size]
    o = rng.choice(objs)
    at = o.body + rng.randrange(o.size)
    old = store.read_bytes(at, 1)[0]
    new = old ^ (1 << rng.randrange(8)) if rng.random() < 0.7 else rng.choice((0xFF, 0xC0, 0x80, 0xED))
    store.write_bytes(at, bytes([new]))
    return f"byte {at - o.body} of the {L['classes'][o.cls]} at {o.addr:#x}: {old:#x} -> {new:#x}"


CHANGES = (change_word, change_word, change_word, change_header, change_meta, change_bytes)


# -- forgeries: several consistent words at once, as a forger (not a random flip) makes them ----


def set_header(store, o, cls: int | None = None, size: int | None = None) -> int:
    """Rewrites o's header with another class or size, its check bits kept."""
    hd = store.read_word(o.addr)
    cls = hd >> 44 if cls is None else cls
    size = (hd >> 8) & 0xFFFFFF if size is None else size
    new = (cls << 44) | (hd & (0xFFF << 32)) | (min(size, SIZE_OVERFLOW) << 8) | (hd & 0xFF)
    store.write_word(o.addr, new)
    return new


def forge_grown_leaf(rng, tpl: Template, store) -> str:
    """A full leaf larger than a page's worth (its slots run over the objects after it)."""
    o = rng.choice([o for o in tpl.by_class[corruption.LEAF] if o.size == corruption.LEAF_MAX + 1])
    size = rng.randrange(corruption.LEAF_MAX + 2, 4 * corruption.LEAF_MAX)
    set_header(store, o, size=size)
    count = size - 1 if rng.random() < 0.7 else rng.randrange(size)
    store.write_word(o.body, fx(count))
    return f"leaf at {o.addr:#x} grown to {size} slots, count {count}"


def forge_grown_node(rng, tpl: Template, store) -> str:
    """A node with more entries than a page holds (they run over the objects after it)."""
    o = rng.choice(tpl.by_class[corruption.NODE])
    count = rng.randrange(corruption.NODE_MAX + 1, 3 * corruption.NODE_MAX)
    set_header(store, o, size=2 * count + 1)
    store.write_word(o.body, fx(count if rng.random() < 0.7 else rng.randrange(1, count)))
    return f"node at {o.addr:#x} grown to {count} entries"


def forge_relabel(rng, tpl: Template, store) -> str:
    """An object of one pointer class relabelled as another of the same format."""
    pointers = [c for c in tpl.classes if tpl.by_class[c][0].fmt == 0]
    o = rng.choice(tpl.by_class[rng.choice(pointers)])
    cls = rng.choice([corruption.LEAF, corruption.NODE, corruption.TUPLE, corruption.TSTORE,
                      corruption.VECTOR, corruption.TABLE, corruption.BLOB])
    set_header(store, o, cls=cls)
    return f"the {L['classes'][o.cls]} at {o.addr:#x} relabelled {L['classes'][cls]}"


def forge_share(rng, tpl: Template, store) -> str:
    """A vector root or node child pointing at another vector's leaf or node (or its own)."""
    holders = tpl.by_class[corruption.VECTOR] + tpl.by_class[corruption.NODE]
    o = rng.choice(holders)
    target = rng.choice(tpl.by_class[corruption.LEAF] + tpl.by_class[corruption.NODE] + [o])
    if o.cls == corruption.VECTOR:
        at = o.body + 8 * corruption.V_ROOT
        if target.cls == corruption.NODE and rng.random() < 0.5:
            store.write_word(o.body + 8 * corruption.V_HEIGHT, fx(rng.randrange(1, 12)))
    else:
        count = max(1, unfx(store.read_word(o.body)))
        at = o.body + 8 * (2 + 2 * rng.randrange(count))
    store.write_word(at, target.addr)
    return f"word at {at:#x} of the {L['classes'][o.cls]} at {o.addr:#x} -> {target.addr:#x}"


def forge_table(rng, tpl: Template, store) -> str:
    """A table store's capacity, index size and counts made consistent with a lie."""
    s_ = rng.choice(tpl.by_class[corruption.TSTORE])
    E, I = unfx(store.read_word(s_.body)), unfx(store.read_word(s_.body + 8))
    what = rng.choice(("no index", "smaller index", "index full", "all absent"))
    if what == "no index" and I:
        store.write_word(s_.body + 8, fx(0))      # the index slots now read as entries
        E2 = (s_.size - 2) // 3
        set_header(store, s_, size=2 + 3 * E2)
        store.write_word(s_.body, fx(E2))
    elif what == "smaller index" and I > 1:
        store.write_word(s_.body + 8, fx(I // 2)); set_header(store, s_, size=s_.size - I // 2)
    elif what == "index full" and I:
        for j in range(I):
            store.write_word(s_.body + 16 + 8 * j, fx(0))
    else:
        for e in range(E):
            at = s_.body + 16 + 8 * I + 24 * e
            store.write_bytes(at + 8, (ABSENT.to_bytes(8, "little")) * 2)
    return f"table store at {s_.addr:#x}: {what} (E {E}, I {I})"


def forge_top(rng, tpl: Template, store) -> str:
    """M_TOP far past the heap, with the page of its last word written (so it is not absent)."""
    top = rng.choice((1 << 30, 1 << 36, 1 << 40, 1 << 45, tpl.top + (1 << 20)))
    store.write_word(8 * L["M_TOP"], top)
    store.write_word(top - 8, rng.choice((0, fx(1), rng.getrandbits(64))))
    if rng.random() < 0.5:   # no free words: the next allocation bumps from the forged top
        store.write_word(8 * L["M_FREE_WORDS"], 0)
    return f"M_TOP forged to {top:#x}, its last page written"


FORGERIES = (forge_grown_leaf, forge_grown_node, forge_relabel, forge_share, forge_share, forge_table,
             forge_top)
FORGED_BASE = 1_000_000   # seeds from here on make forgeries instead of changes


def make_damaged(tpl: Template, work: str, seed: int) -> list[str]:
    """Copies the template to work and makes the seed's changes; their descriptions."""
    rng = random.Random(seed)
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(tpl.path, work)
    kinds = FORGERIES if seed >= FORGED_BASE else CHANGES
    changes = []
    with corruption.damaged(work) as store:
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            changes.append(rng.choice(kinds)(rng, tpl, store))
    return changes


# -- the script ---------------------------------------------------------------------------------


def verdict(exc: BaseException) -> tuple[str, str] | None:
    """None when exc is an allowed outcome, else (why it is a finding, its kind)."""
    if isinstance(exc, ValueError):
        frames = traceback.extract_tb(exc.__traceback__)
        if frames and f"{os.sep}pager{os.sep}" in frames[-1].filename:
            return ("the pager's ValueError for an address out of its range reached the caller",
                    "pager range error")
    if isinstance(exc, ALLOWED):
        return None
    kind = "MemoryError" if isinstance(exc, MemoryError) else "other exception"
    return f"{type(exc).__name__} is not an allowed outcome", kind


class Run:
    """One seed's script: each step's outcome, and the first finding."""

    def __init__(self) -> None:
        self.events: dict[str, str] = {}
        self.finding: str | None = None

    def step(self, name: str, fn, *args):
        """Runs fn(*args); returns its result, or None after an allowed exception."""
        try:
            result = fn(*args)
        except Finding:
            raise
        except BaseException as exc:   # noqa: BLE001 - classifying every outcome is the point
            why = verdict(exc)
            self.events[name] = type(exc).__name__
            if why:
                where = traceback.extract_tb(exc.__traceback__)[-1]
                raise Finding(f"step {name}: {why[0]}: {type(exc).__name__}: {str(exc)[:300]} "
                              f"(at {where.filename}:{where.lineno} in {where.name})",
                              why[1]) from exc
            return None
        self.events[name] = "ok"
        return result


def each(items, fn):
    for x in items:
        fn(x)


def walk(value, depth: int = 0, seen: set | None = None) -> None:
    """Reads everything reachable from value, each handle once (a damaged image may have cycles)."""
    seen = set() if seen is None else seen
    if depth > 6 or (isinstance(value, image.Handle) and value in seen):
        return
    if isinstance(value, image.Handle):
        seen.add(value)
    if isinstance(value, image.Vector):
        for x in value:
            walk(x, depth + 1, seen)
    elif isinstance(value, image.Table):
        for k, v in value.items():
            walk(k, depth + 1, seen)
            walk(v, depth + 1, seen)
    elif isinstance(value, tuple):
        for x in value:
            walk(x, depth + 1, seen)
    elif isinstance(value, image.Blob):
        value.read()


def reads(run: Run, img) -> None:
    root = run.step("root", lambda: img.root)
    if not isinstance(root, image.Table):
        return
    keys = run.step("root keys", list, root) or []
    run.step("root values", each, keys, root.get)
    inbox = run.step("inbox", root.get, "inbox")
    if isinstance(inbox, image.Vector):
        n = run.step("inbox len", len, inbox) or 0
        for name, i in (("0", 0), ("-1", -1), ("len // 2", n // 2), ("len + 5", n + 5)):
            run.step(f"inbox[{name}]", inbox.__getitem__, i)
        run.step("inbox[10:20]", inbox.__getitem__, slice(10, 20))
        run.step("inbox[::-37]", inbox.__getitem__, slice(None, None, -37))
        run.step("inbox[:]", inbox.__getitem__, slice(None))
        run.step("list(inbox)", list, inbox)
        mails = run.step("iterate inbox", lambda: [m for m in inbox]) or []
        for j, mail in enumerate(mails[::23]):
            if isinstance(mail, image.Table):
                run.step(f"mail {j} dict", dict, mail)
                run.step(f"mail {j} id", mail.get, "id")
                run.step(f"mail {j} from", lambda: "from" in mail and mail["from"])
                run.step(f"mail {j} missing", mail.get, "no such key")
                run.step(f"mail {j} tuple key", mail.get, ("a", 1))
                run.step(f"mail {j} walk", walk, mail)
    numbers = run.step("numbers", root.get, "numbers")
    if isinstance(numbers, image.Vector):
        run.step("numbers len", len, numbers)
        run.step("numbers[1234]", numbers.__getitem__, 1234)
        run.step("numbers[100:400]", numbers.__getitem__, slice(100, 400))
        run.step("numbers sum", lambda: sum(x for x in numbers if type(x) is int))
        run.step("numbers index", numbers.index, 1999)
    deep = run.step("deep", root.get, "deep")
    if isinstance(deep, image.Vector):
        run.step("deep len", len, deep)
        run.step("deep[-1]", deep.__getitem__, -1)
        run.step("deep[7777]", deep.__getitem__, 7777)
        run.step("deep[4000:4300]", deep.__getitem__, slice(4000, 4300))
        run.step("deep[::97]", deep.__getitem__, slice(None, None, 97))
    small = run.step("small", root.get, "small")
    if isinstance(small, image.Table):
        run.step("small dict", dict, small)
        run.step("small a", small.get, "a")
        run.step("small len", len, small)
    blob = run.step("blob", root.get, "blob")
    if isinstance(blob, image.Blob):
        run.step("blob len", len, blob)
        run.step("blob read", blob.read)
        digest = run.step("blob hash", lambda: blob.hash)
        if isinstance(digest, bytes):
            run.step("blob by hash", img.blob_by_hash, digest)
    run.step("walk root", walk, root)


def writes(run: Run, img) -> None:
    root = run.step("root again", lambda: img.root)
    if not isinstance(root, image.Table):
        return
    inbox = run.step("inbox again", root.get, "inbox")
    if isinstance(inbox, image.Vector):
        run.step("inbox append", inbox.append, {"id": 1000, "from": "new@example.org", "tags": (1, 2)})
        run.step("inbox insert", inbox.insert, 3, "inserted")
        run.step("inbox del", inbox.__delitem__, 7)
        run.step("inbox set", inbox.__setitem__, 2, ["replaced", 2])
        run.step("inbox extend", inbox.extend, [{"n": i} for i in range(130)])
        run.step("inbox del slice", inbox.__delitem__, slice(20, 30))
        mail = run.step("mail again", inbox.__getitem__, 5)
        if isinstance(mail, image.Table):
            run.step("mail set", mail.__setitem__, "new key", "new value")
            run.step("mail del", lambda: mail.pop("id", None))
            run.step("mail grow", mail.update, {f"k{i}": i for i in range(20)})
    numbers = run.step("numbers again", root.get, "numbers")
    if isinstance(numbers, image.Vector):
        run.step("numbers append", numbers.append, 2000)
        run.step("numbers insert", numbers.insert, 0, -1)
        for k in range(1, 6):
            run.step(f"numbers insert {k}/6", numbers.insert, 2000 * k // 6, "middle")
        run.step("numbers del", numbers.__delitem__, 5)
        run.step("numbers pop", numbers.pop)
    deep = run.step("deep again", root.get, "deep")
    if isinstance(deep, image.Vector):
        run.step("deep append", deep.append, "end")
        for k in range(1, 10):
            run.step(f"deep insert {k}/10", deep.insert, 8100 * k // 10, ("inserted", k))
        run.step("deep del", deep.__delitem__, 100)
        run.step("deep extend", deep.extend, range(300))
        run.step("deep set", deep.__setitem__, -2, None)
    small = run.step("small again", root.get, "small")
    if isinstance(small, image.Table):
        run.step("small set", small.__setitem__, "d", {"nested": [1, 2, 3]})
        run.step("small del", lambda: small.pop("a", None))
    run.step("root set", root.__setitem__, "added", [b"x" * 100, "y" * 50, 10**40, 1.5e300])
    run.step("root del", lambda: root.pop("small", None))
    run.step("new blob", img.blob, b"a new blob " * 50)


def exercise(path: str) -> dict[str, str]:
    """The script over a damaged image: each step's outcome."""
    run = Run()
    img = run.step("open", image.open, path)
    if img is None:
        return run.events
    try:
        run.step("check first", img.check)
        reads(run, img)
        writes(run, img)
        run.step("gc", img.gc)
        run.step("check last", img.check)
    finally:
        run.step("close", img.close)
    img = run.step("reopen", image.open, path)
    if img is not None:
        run.step("check reopened", img.check)
        run.step("read reopened", lambda: walk(img.root))
        run.step("close reopened", img.close)
    return run.events


EXPECTED = {"inbox[len + 5]": "IndexError"}   # what the undamaged template refuses
# What says the image is damaged (the rest are what an operation says of its arguments).
DAMAGE_ERRORS = {"CorruptObject", "CorruptImage", "ImageError", "StoreFailed"}


def refused(events: dict[str, str]) -> list[str]:
    return sorted(k for k, v in events.items() if v != "ok" and EXPECTED.get(k) != v)


def outcome(events: dict[str, str]) -> str:
    """The seed's headline: where the damage was first found.  "check passed, then
    refused" is damage that check() missed but a later step called corrupt: a gap in the
    verifier (or a write that corrupted the image itself)."""
    if events.get("open") != "ok":
        return "open refused"
    if events.get("check first") != "ok":
        return "check refused"
    if any(events[k] in DAMAGE_ERRORS for k in refused(events)):
        return "check passed, then refused"
    return "clean"


def run_seed(tpl: Template, root: str, seed: int) -> None:
    """One seed, reported on stdout: SEED before the script runs, then DONE or FAIL."""
    work = os.path.join(root, f"s{seed}.image")
    faulthandler.dump_traceback_later(SEED_SECONDS, exit=True)
    try:
        changes = make_damaged(tpl, work, seed)
        print("SEED", seed, json.dumps(changes), flush=True)
        try:
            events = exercise(work)
        except Finding as exc:
            print("FAIL", json.dumps({"seed": seed, "changes": changes, "error": str(exc),
                                      "kind": exc.kind}), flush=True)
        else:
            print("DONE", json.dumps({"seed": seed, "outcome": outcome(events),
                                      "refused": [f"{k}: {events[k]}" for k in refused(events)][:8],
                                      "changes": changes}),
                  flush=True)
    finally:
        faulthandler.cancel_dump_traceback_later()
        shutil.rmtree(work, ignore_errors=True)


def limit_memory() -> None:
    """Caps the child's address space, so that an allocation sized by a forged word fails
    (MemoryError, a finding) instead of taking the machine's memory.  Not under ASan, whose
    shadow memory reserves terabytes of address space (give it max_allocation_size_mb)."""
    if "asan" not in os.environ.get("LD_PRELOAD", ""):
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def child_main(template: str, root: str, seeds: str) -> None:
    """The body of a child process: the seeds (a JSON list) against the template."""
    faulthandler.enable()
    limit_memory()
    os.environ.pop("IMAGO_GC_STRESS", None)
    sys.setrecursionlimit(2000)
    tpl = Template(template)
    for seed in json.loads(seeds):
        run_seed(tpl, root, seed)


# -- the harness: child processes, WORKERS at a time ------------------------------------------------

HARNESS = ("import sys; sys.path.insert(0, {tests!r}); import test_image_hostile as h; "
           "h.child_main(*sys.argv[1:])")


class Results:
    """What the seeds did: findings by kind, each seed's outcome, the steps refused."""

    def __init__(self, seeds: range) -> None:
        self.seeds = seeds
        self.lock = threading.Lock()
        self.findings: dict[str, list[str]] = {kind: [] for kind in KINDS}
        self.outcomes: collections.Counter = collections.Counter()
        self.refused: collections.Counter = collections.Counter()
        self.missed: list[str] = []     # seeds whose damage check() passed but a step met
        self.done = 0
        self.seconds = 0.0

    def add(self, kind: str, text: str) -> None:
        with self.lock:
            self.done += 1
            self.findings[kind].append(text)

    def summary(self) -> str:
        return (f"{len(self.seeds)} seeds in {self.seconds:.1f} s with {WORKERS} workers; findings "
                f"{ {k: len(v) for k, v in self.findings.items() if v} }; outcomes "
                f"{dict(self.outcomes)}; steps refused most often "
                f"{dict(self.refused.most_common(10))}")

    def report(self, *kinds: str) -> str:
        found = [f"[{k}] {t}" for k in kinds for t in self.findings[k]]
        return f"{len(found)} findings ({self.summary()})\n" + "\n\n".join(found[:25])


def run_batch(template: str, root: str, seeds: list[int], results: Results) -> list[int]:
    """Runs seeds in one child until it ends; the seeds left (after a crash or hang)."""
    code = HARNESS.format(tests=os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.pop("IMAGO_GC_STRESS", None)
    started, finished = None, set()

    def on_line(tag: str, rest: str) -> None:
        nonlocal started
        if tag == "SEED":
            seed, _, text = rest.partition(" ")
            started = (int(seed), text)
        elif tag == "DONE":
            report = json.loads(rest)
            finished.add(report["seed"])
            with results.lock:
                results.done += 1
                results.outcomes[report["outcome"]] += 1
                results.refused.update(report["refused"])
                if report["outcome"] == "check passed, then refused":
                    results.missed.append(f"seed {report['seed']} {report['changes']}: "
                                          f"{report['refused']}")
        elif tag == "FAIL":
            report = json.loads(rest)
            finished.add(report["seed"])
            results.add(report["kind"], f"seed {report['seed']} {report['changes']}: "
                                        f"{report['error']}")

    rc, stalled, stderr = follow([sys.executable, "-c", code, template, root, json.dumps(seeds)],
                                 os.path.join(root, f"stderr-{seeds[0]}.txt"), STALL_SECONDS,
                                 on_line, env)
    left = [s for s in seeds if s not in finished]
    if rc == 0 and not stalled:
        return left
    seed, text = started if started and started[0] in left else (left[0] if left else -1, "?")
    hung = stalled or "Timeout (" in stderr
    how = (f"hung (no progress for {STALL_SECONDS if stalled else SEED_SECONDS} s)" if hung
           else f"died (exit status {rc})")
    results.add("hang" if hung else "crash", f"seed {seed} {text}: the child {how}\n{stderr[-3000:]}")
    return [s for s in left if s != seed]


def run_fuzz(template: str, root: str, seeds: range) -> Results:
    """Every seed, WORKERS children side by side, each restarted after a crash or hang."""
    results = Results(seeds)
    started = time.monotonic()

    def worker(mine: list[int]) -> None:
        while mine:
            mine = run_batch(template, root, mine, results)

    threads = [threading.Thread(target=worker, args=(list(seeds)[k::WORKERS],)) for k in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.seconds = time.monotonic() - started
    print(results.summary())
    for line in results.missed[:15]:   # damage check() did not see (-s shows them)
        print("  missed by check():", line)
    return results


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("hostile") / "template.image")
    corruption.build_image(path)
    return path


@pytest.fixture(scope="module")
def default_run(template, tmp_path_factory) -> Results:
    return run_fuzz(template, str(tmp_path_factory.mktemp("fuzz")), DEFAULT_SEEDS)


@pytest.fixture(scope="module")
def soak_run(template, tmp_path_factory) -> Results:
    if os.environ.get("IMAGO_SOAK") != "1":
        pytest.skip("set IMAGO_SOAK=1 to soak")
    return run_fuzz(template, str(tmp_path_factory.mktemp("soak")), SOAK_SEEDS)


@pytest.fixture(scope="module")
def forged_run(template, tmp_path_factory) -> Results:
    return run_fuzz(template, str(tmp_path_factory.mktemp("forged")), FORGED_SEEDS)


@pytest.fixture(scope="module")
def forged_soak_run(template, tmp_path_factory) -> Results:
    if os.environ.get("IMAGO_SOAK") != "1":
        pytest.skip("set IMAGO_SOAK=1 to soak")
    return run_fuzz(template, str(tmp_path_factory.mktemp("forged-soak")), FORGED_SOAK_SEEDS)


class TestHostileObjects:
    def test_template_runs_clean(self, template, tmp_path):
        """The undamaged template passes the whole script, refusing only an index past the end."""
        work = str(tmp_path / "clean.image")
        shutil.copytree(template, work)
        events = exercise(work)
        assert {k: v for k, v in events.items() if v != "ok"} == EXPECTED
        assert len(events) > 60 and outcome(events) == "clean"

    def test_changes_are_seeded(self, template, tmp_path):
        """A seed makes the same changes every time."""
        tpl = Template(template)
        a = make_damaged(tpl, str(tmp_path / "a.image"), 7)
        b = make_damaged(tpl, str(tmp_path / "b.image"), 7)
        assert a == b and a

    def test_no_crash_and_no_hang(self, default_run):
        """150 seeds: no child segfaults, aborts or runs a seed past SEED_SECONDS."""
        assert not default_run.findings["crash"] + default_run.findings["hang"], \
            default_run.report("crash", "hang")

    def test_no_unexpected_exception(self, default_run):
        """150 seeds: no step raises SystemError, OverflowError, AttributeError or another exception ALLOWED lacks."""
        assert not default_run.findings["other exception"], default_run.report("other exception")

    def test_no_memory_error_and_no_pager_range_error(self, default_run):
        """150 seeds: no step raises MemoryError, or the pager's ValueError for an address out of range."""
        assert not default_run.findings["MemoryError"] + default_run.findings["pager range error"], \
            default_run.report("MemoryError", "pager range error")

    def test_every_stage_is_reached(self, default_run):
        """Every seed ends; some changes are found by check() at once, some are harmless."""
        r = default_run
        assert r.done == len(r.seeds), r.summary()
        for kind in ("check refused", "clean"):
            assert r.outcomes[kind] >= 5, r.summary()

    def test_check_finds_what_later_steps_meet(self, default_run):
        """150 seeds: when check() passes on the damaged image, no later step finds it corrupt."""
        assert not default_run.missed, (f"{len(default_run.missed)} seeds\n"
                                        + "\n".join(default_run.missed[:25]))


# Not strict: over 2,000 seeds a forger may pair a heap top forged past the
# heap (with its page written) with a vector length to match, which the
# object memory cannot tell from a real one without counting the store's
# pages; list(v) then preallocates and raises MemoryError.  See
# test_image_corruption's test_forged_top_and_length.
FORGED_TOP_AND_LENGTH = pytest.mark.xfail(strict=False, reason=(
    "known gap: a forged heap top with its page written, plus a vector length to match, "
    "makes list(v) raise MemoryError"))


class TestForgedStructures:
    """Forgeries (FORGERIES): leaves and nodes grown past a page, objects relabelled, subtrees
    shared or cycled, table stores rearranged, each with its header's check bits kept."""

    def test_no_crash_and_no_hang(self, forged_run):
        """100 forged seeds: no child segfaults, aborts or runs a seed past SEED_SECONDS."""
        assert not forged_run.findings["crash"] + forged_run.findings["hang"], \
            forged_run.report("crash", "hang")

    def test_no_unexpected_exception(self, forged_run):
        """100 forged seeds: no step raises an exception ALLOWED lacks."""
        assert not forged_run.findings["other exception"], forged_run.report("other exception")

    def test_no_memory_error_and_no_pager_range_error(self, forged_run):
        """100 forged seeds: no step raises MemoryError or the pager's range ValueError."""
        assert not forged_run.findings["MemoryError"] + forged_run.findings["pager range error"], \
            forged_run.report("MemoryError", "pager range error")

    def test_check_finds_what_later_steps_meet(self, forged_run):
        """100 forged seeds: when check() passes on the forged image, no later step finds it corrupt."""
        assert not forged_run.missed, f"{len(forged_run.missed)} seeds\n" + "\n".join(forged_run.missed[:25])


@pytest.mark.soak
class TestForgedStructuresSoak:
    def test_no_crash_and_no_hang(self, forged_soak_run):
        """2,000 more forged seeds: no child segfaults, aborts or hangs."""
        assert not forged_soak_run.findings["crash"] + forged_soak_run.findings["hang"], \
            forged_soak_run.report("crash", "hang")

    def test_no_unexpected_exception(self, forged_soak_run):
        """2,000 more forged seeds: no step raises an exception ALLOWED lacks."""
        assert not forged_soak_run.findings["other exception"], \
            forged_soak_run.report("other exception")

    @FORGED_TOP_AND_LENGTH
    def test_no_memory_error_and_no_pager_range_error(self, forged_soak_run):
        """2,000 more forged seeds: no MemoryError and no pager range error."""
        assert not forged_soak_run.findings["MemoryError"] + forged_soak_run.findings["pager range error"], \
            forged_soak_run.report("MemoryError", "pager range error")

    def test_check_finds_what_later_steps_meet(self, forged_soak_run):
        """2,000 more forged seeds: when check() passes, no later step finds the image corrupt."""
        assert not forged_soak_run.missed, (f"{len(forged_soak_run.missed)} seeds\n"
                                            + "\n".join(forged_soak_run.missed[:25]))


@pytest.mark.soak
class TestHostileObjectsSoak:
    def test_no_crash_and_no_hang(self, soak_run):
        """3,000 more seeds: no child segfaults, aborts or hangs."""
        assert not soak_run.findings["crash"] + soak_run.findings["hang"], soak_run.report("crash", "hang")

    def test_no_unexpected_exception(self, soak_run):
        """3,000 more seeds: no step raises an exception ALLOWED lacks."""
        assert not soak_run.findings["other exception"], soak_run.report("other exception")

    def test_no_memory_error_and_no_pager_range_error(self, soak_run):
        """3,000 more seeds: no MemoryError and no pager range error."""
        assert not soak_run.findings["MemoryError"] + soak_run.findings["pager range error"], \
            soak_run.report("MemoryError", "pager range error")

    def test_check_finds_what_later_steps_meet(self, soak_run):
        """3,000 more seeds: when check() passes, no later step finds the image corrupt."""
        assert not soak_run.missed, f"{len(soak_run.missed)} seeds\n" + "\n".join(soak_run.missed[:25])


def replay(seeds: list[int]) -> None:
    """Runs seeds in this process against a fresh template, showing each finding's traceback."""
    import tempfile
    root = tempfile.mkdtemp(prefix="image-hostile-")
    try:
        path = os.path.join(root, "template.image")
        corruption.build_image(path)
        tpl = Template(path)
        for seed in seeds:
            work = os.path.join(root, f"s{seed}.image")
            changes = make_damaged(tpl, work, seed)
            print(f"seed {seed}: {changes}", flush=True)
            try:
                print(f"  events: {exercise(work)}")
            except Finding as exc:
                print(f"  FINDING [{exc.kind}]: {exc}")
                traceback.print_exception(exc.__cause__)
            shutil.rmtree(work)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    replay([int(a) for a in sys.argv[1:]])
