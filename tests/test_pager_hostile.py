"""Hostile damage: change one field, entry or page and re-sign everything that covers it.

test_pager_corruption flips bytes, which a checksum stops before the C core sees
them.  Here each seed makes one change a checksum cannot catch, because every
checksum over it is recomputed afterwards, as a buggy writer or a deliberate
forger would leave it:

- a record header field (seq, length, npages, root_loc, depth, prev_ckpt, ...);
- a word of a record body (page pairs, freed list, usage table, metadata);
- a usage entry (segment number or live count) of a checkpoint;
- an entry (loc, sum, commit or aux) of a page-table node on disk;
- a word of a data page (planting node-like entries in it).

Re-signing, in this order: every checkpoint's tree, children before parents
(node sums up to root_sum), then every record in log order (nodes_sum,
prev_sum, the record checksum), then the HINT (rewritten or removed).  The one
field a seed changed is never recomputed.  A location chosen as a new value is
often a real slot (a record, a data page, another level's node), so the core
meets pages used as nodes and nodes reached twice.

What opening, reading, check(), view(), commit() and reopening may do then:
succeed, where every page read is some version of that page that a commit
wrote (or zeros, or the planted page); raise CorruptImage; raise KeyError from
view() of a commit no longer reachable; warn RecoveryWarning.  Anything else
(another exception, a crash, a hang) is a finding.  A change that nothing
interprets (a record's time, metadata bytes, a node entry's commit or aux
word) must change nothing: the image opens, reads and checks as the model says.

Each batch of seeds runs in a child process (HARNESS below): a segfault, abort
or hang (faulthandler ends the child after SEED_SECONDS) fails the test naming
the seed and the change, and the run goes on with the next seed.  To replay a
seed in this process, with its traceback: ``python tests/test_pager_hostile.py SEED``.
"""
from __future__ import annotations

import collections
import faulthandler
import json
import os
import random
import shutil
import struct
import sys
import time
import traceback
import warnings
from dataclasses import dataclass

import pytest

import test_pager_corruption as corruption
from children import follow
from pager import CorruptImage, PageStore, RecoveryWarning
from pager import _format as fmt
from pager._native import hash64

PAGE = corruption.PAGE          # 1 KiB: fanout 32, so a few hundred pages need nodes on disk
SEGMENT = corruption.SEGMENT    # 64 slots: a few hundred commits fill over a dozen segments
COMMITS = 300                   # enough for 23 segments and 60 checkpoints; built in 0.1 s
CHECKPOINT_EVERY = 6            # several checkpoints per segment, as a full-size segment has
DENSE_PAGES = 160               # five leaves, rewritten often: commits replace each other's pages
SPARSE_PAGES = (2_000, 40_000, 1 << 20)   # a five-level table: interior nodes at every level
NEW_PAGE = 3_000                # what the commit after the damage writes
SEED_SECONDS = 10               # a seed takes about 0.1 s; one still running after 10 s hangs
STALL_SECONDS = SEED_SECONDS + 30   # the parent's backstop, should faulthandler not fire
DEFAULT_SEEDS = range(0, 300)
SOAK_SEEDS = range(100_000, 102_000)
MIN_EACH_OUTCOME = 5            # per headline outcome; 300 seeds give 35 to 170 of each
MAX_TREE_DEPTH = 8              # 40-bit page numbers at 5 bits a level (native/core.c)
M64 = (1 << 64) - 1
NODE_SEED = 0x6e6f64652d6c766c  # as native/core.c: node sums are seeded per level,
GOLDEN = 0x9E3779B97F4A7C15     # page sums per page number
ZERO_PAGE = bytes(PAGE)
HINT_NAME = "HINT"


# -- the template image and its model ------------------------------------------------


def template_batches() -> list[list[int]]:
    """COMMITS seeded batches: mostly one to three dense pages, now and then a run
    of them, and every 37th commit one of the sparse pages."""
    rng = random.Random(4242)
    batches = []
    for i in range(COMMITS):
        if i % 37 == 5:
            batches.append([SPARSE_PAGES[i // 37 % len(SPARSE_PAGES)], rng.randrange(DENSE_PAGES)])
        elif i % 11 == 0:
            start = rng.randrange(DENSE_PAGES - 8)
            batches.append(list(range(start, start + rng.randint(4, 8))))
        else:
            batches.append(rng.sample(range(DENSE_PAGES), rng.randint(1, 3)))
    return batches


def template_model() -> corruption.History:
    """What each commit of the template wrote, without building it."""
    hist = corruption.History()
    hist.writes += [tuple(b) for b in template_batches()]
    return hist


def build_template(path: str) -> None:
    with corruption.checkpoint_every(CHECKPOINT_EVERY):
        corruption.build(path, template_batches(), segment_size=SEGMENT)
    recs = corruption.records(path)
    ckpts = [r for r in recs if r.is_checkpoint]
    assert len(recs) == COMMITS + 1 and len(corruption.segment_names(path)) >= 10
    assert len(ckpts) >= 2 * len(corruption.segment_names(path))
    assert sum(r.nnodes for r in ckpts) >= 100 and ckpts[-1].depth == 5
    assert os.path.exists(os.path.join(path, HINT_NAME))


# -- the image in memory, and re-signing it ------------------------------------------


class Img:
    """Every segment of an image as bytearrays, and the checksums over them."""

    def __init__(self, segs: dict[int, bytearray], salt: int) -> None:
        self.segs, self.salt = segs, salt

    def nslots(self, segno: int) -> int:
        return len(self.segs[segno]) // PAGE

    def valid_loc(self, loc: int) -> bool:
        segno, slot = loc >> 32, loc & 0xFFFFFFFF
        return segno in self.segs and 0 < slot < self.nslots(segno)

    def at(self, loc: int) -> tuple[bytearray, int]:
        return self.segs[loc >> 32], (loc & 0xFFFFFFFF) * PAGE

    def word(self, segno: int, off: int, width: int = 8) -> int:
        return int.from_bytes(self.segs[segno][off:off + width], "little")

    def put(self, segno: int, off: int, value: int, width: int = 8) -> None:
        self.segs[segno][off:off + width] = value.to_bytes(width, "little")

    def node_sum(self, level: int, data) -> int:
        return hash64(bytes(data), self.salt ^ ((NODE_SEED + level) & M64))

    def page_sum(self, page_no: int, data) -> int:
        return hash64(bytes(data), self.salt ^ ((page_no * GOLDEN) & M64))


def resign_tree(img: Img, loc: int, level: int, done: dict) -> int:
    """Recompute the sum in every entry of a node that locates a slot (children
    first, as a node at the level below), and return the node's own sum."""
    if (loc, level) in done:
        return done[loc, level]
    seg, off = img.at(loc)
    if level > 0:
        for i in range(PAGE // 32):
            child = int.from_bytes(seg[off + 32 * i:off + 32 * i + 8], "little")
            if child and img.valid_loc(child):
                s = resign_tree(img, child, level - 1, done)
                seg[off + 32 * i + 8:off + 32 * i + 16] = s.to_bytes(8, "little")
    done[loc, level] = img.node_sum(level, seg[off:off + PAGE])
    return done[loc, level]


def resign(img: Img, places: list[tuple[int, int]], keep: set) -> None:
    """Re-sign the trees of every checkpoint, then every record in log order
    (places: (segno, slot) of each record of the template), leaving the
    (segno, offset) words in keep as they are."""
    done: dict = {}
    for segno, slot in places:
        off = slot * PAGE
        flags, root_loc, depth = (img.word(segno, off + 10, 2), img.word(segno, off + 72),
                                  img.word(segno, off + 68, 2))
        if flags & fmt.FLAG_CHECKPOINT and 0 < depth <= MAX_TREE_DEPTH and img.valid_loc(root_loc):
            root_sum = resign_tree(img, root_loc, depth - 1, done)
            if (segno, off + 80) not in keep:
                img.put(segno, off + 80, root_sum)
    prev = None
    for segno, slot in places:
        seg, off = img.segs[segno], slot * PAGE
        length, npages, nnodes = (img.word(segno, off + 12, 4), img.word(segno, off + 48, 4),
                                  img.word(segno, off + 52, 4))
        if length < fmt.RECORD_BLOCK or off + length > len(seg):
            continue
        lo = (slot + -(-length // PAGE) + npages) * PAGE
        if nnodes and lo + nnodes * PAGE <= len(seg) and (segno, off + 104) not in keep:
            img.put(segno, off + 104, hash64(bytes(seg[lo:lo + nnodes * PAGE]), img.salt))
        if prev is not None and (segno, off + 32) not in keep:
            img.put(segno, off + 32, prev)
        prev = hash64(bytes(seg[off:off + length - 8]), img.salt)
        img.put(segno, off + length - 8, prev)


# -- one hostile change ------------------------------------------------------------------

# (name, offset, width) of the record header fields a seed may change; prev_sum
# and nodes_sum are left out (re-signing recomputes them), as are magic and pad.
REC_FIELDS = (("version", 8, 2), ("flags", 10, 2), ("length", 12, 4), ("seq", 16, 8),
              ("parent", 24, 8), ("time_ns", 40, 8), ("npages", 48, 4), ("nnodes", 52, 4),
              ("nfreed", 56, 4), ("meta_len", 60, 4), ("nusage", 64, 4), ("depth", 68, 2),
              ("root_loc", 72, 8), ("root_sum", 80, 8), ("ckpt_slot", 88, 8),
              ("prev_ckpt", 96, 8), ("slot", 112, 4), ("segno", 116, 4))
INTERESTING = (0, 1, 2, 3, 7, 31, 32, 33, 127, 128, 255, 256, 1023, 1024, 4096, 65535, 65536,
               (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 32) + 1, (1 << 40) - 1,
               1 << 40, 1 << 62, 1 << 63, M64 - 1, M64)
NUDGES = (-2, -1, 1, 2, 5, 100, 1 << 32, -(1 << 32))
ENTRY_FIELDS = {0: "loc", 8: "sum", 16: "commit", 24: "aux"}


@dataclass
class Change:
    """What a seed changed: for the failure message, and for the oracle."""
    text: str
    benign: bool = False                     # nothing interprets it: the model must hold
    planted: tuple[int, bytes] | None = None  # (page_no, bytes) of a changed data page


def new_value(rng: random.Random, img: Img, old: int, width: int) -> int:
    """A value other than old: an edge case, old nudged, or a real slot or location."""
    mask = (1 << (8 * width)) - 1
    while True:
        pick = rng.random()
        if pick < 0.4:
            v = rng.choice(INTERESTING)
        elif pick < 0.7:
            v = old + rng.choice(NUDGES)
        else:
            segno = rng.choice(sorted(img.segs))
            slot = rng.randrange(1, img.nslots(segno))
            v = (segno << 32 | slot) if width == 8 else rng.choice((slot, segno))
        if v & mask != old:
            return v & mask


def change_word(rng, img: Img, segno: int, off: int, width: int) -> tuple[int, int]:
    old = img.word(segno, off, width)
    new = new_value(rng, img, old, width)
    img.put(segno, off, new, width)
    return old, new


def pick_record(rng, recs: list[fmt.Record], want=lambda r: True) -> fmt.Record:
    """Mostly a record the head's replay reads (the newest checkpoint and after)."""
    head_ckpt = [r for r in recs if r.is_checkpoint][-1]
    near = [r for r in recs if r.seq >= head_ckpt.seq and want(r)]
    pool = near if near and rng.random() < 0.6 else [r for r in recs if want(r)]
    return rng.choice(pool)


def change_field(rng, img, recs, keep) -> Change:
    name, o, width = rng.choice(REC_FIELDS)
    r = pick_record(rng, recs, (lambda r: r.is_checkpoint) if rng.random() < 0.4 else
                    (lambda r: True))
    off = r.slot * PAGE + o
    old, new = change_word(rng, img, r.segno, off, width)
    keep.add((r.segno, off))
    return Change(f"record field {name} of commit {r.seq}: {old:#x} -> {new:#x}",
                  benign=name == "time_ns")


def change_body(rng, img, recs, keep) -> Change:
    r = pick_record(rng, recs)
    body = r.length - 8 - fmt.HEADER_BYTES
    rel = fmt.HEADER_BYTES + rng.randrange(body) // 8 * 8
    off = r.slot * PAGE + rel
    old, new = change_word(rng, img, r.segno, off, 8)
    meta_at = fmt.HEADER_BYTES + 16 * r.npages + 8 * r.nfreed + 16 * len(r.usage)
    return Change(f"record body word {rel} of commit {r.seq}: {old:#x} -> {new:#x}",
                  benign=meta_at <= rel and rel + 8 <= meta_at + len(r.meta))


def change_usage(rng, img, recs, keep) -> Change:
    r = pick_record(rng, recs, lambda r: r.usage)
    i, half = rng.randrange(len(r.usage)), rng.choice((0, 8))
    rel = fmt.HEADER_BYTES + 16 * r.npages + 8 * r.nfreed + 16 * i + half
    old, new = change_word(rng, img, r.segno, r.slot * PAGE + rel, 8)
    return Change(f"usage entry {i} ({'segno' if half == 0 else 'live'}) of checkpoint "
                  f"{r.seq}: {old:#x} -> {new:#x}")


def tree_nodes(img: Img, root_loc: int, depth: int) -> list[tuple[int, int]]:
    """(loc, level) of every node reachable from a root, each once."""
    out, todo = {}, [(root_loc, depth - 1)] if depth else []
    while todo:
        loc, level = todo.pop()
        if (loc, level) in out or not img.valid_loc(loc):
            continue
        out[loc, level] = None
        seg, off = img.at(loc)
        if level > 0:
            todo += [(child, level - 1) for i in range(PAGE // 32)
                     if (child := int.from_bytes(seg[off + 32 * i:off + 32 * i + 8], "little"))]
    return list(out)


def change_node(rng, img, recs, keep) -> Change:
    ckpts = [r for r in recs if r.is_checkpoint and r.depth]
    ckpt = ckpts[-1] if rng.random() < 0.75 else rng.choice(ckpts)
    loc, level = rng.choice(tree_nodes(img, ckpt.root_loc, ckpt.depth))
    seg, off = img.at(loc)
    used = [i for i in range(PAGE // 32) if seg[off + 32 * i:off + 32 * i + 8] != bytes(8)]
    i = rng.choice(used) if used and rng.random() < 0.7 else rng.randrange(PAGE // 32)
    # an interior entry's sum is what re-signing recomputes: change the others
    field = rng.choice((0, 8, 16, 24) if level == 0 else (0, 16, 24))
    at = off + 32 * i + field
    old, new = change_word(rng, img, loc >> 32, at, 8)
    keep.add((loc >> 32, at))
    return Change(f"{ENTRY_FIELDS[field]} of entry {i} in the level-{level} node at "
                  f"{fmt.segment_name(loc >> 32)} slot {loc & 0xFFFFFFFF} (tree of checkpoint "
                  f"{ckpt.seq}): {old:#x} -> {new:#x}",
                  benign=field in (16, 24) and i in used)


def change_page(rng, img, recs, keep) -> Change:
    r = pick_record(rng, recs, lambda r: r.npages)
    i = rng.randrange(r.npages)
    page_no = r.page_numbers()[i]
    seg, poff = img.segs[r.segno], (r.first_slot + i) * PAGE
    rel = rng.randrange(PAGE // 32) * 32 + rng.choice((0, 8, 16))
    old, new = change_word(rng, img, r.segno, poff + rel, 8)
    data = bytes(seg[poff:poff + PAGE])
    img.put(r.segno, r.slot * PAGE + fmt.HEADER_BYTES + 16 * i + 8, img.page_sum(page_no, data))
    return Change(f"word {rel} of page {page_no} as commit {r.seq} wrote it: "
                  f"{old:#x} -> {new:#x}", planted=(page_no, data))


CHANGES = (change_field, change_body, change_usage, change_node, change_node, change_page)


class Template:
    """The pristine image, read once per child: its bytes, records and model."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.recs = corruption.records(path)
        self.places = [(r.segno, r.slot) for r in self.recs]
        self.salt = corruption.salt_of(path)
        self.segs = {int(n[4:]): corruption.read_file(os.path.join(path, n))
                     for n in corruption.segment_names(path)}
        self.hint = corruption.read_file(os.path.join(path, HINT_NAME))
        self.hist = template_model()
        self.newest = len(self.hist.writes) - 1
        self.pages = self.hist.pages()


def make_damaged(tpl: Template, work: str, seed: int) -> Change:
    """Copy the template to work with one seeded hostile change, re-signed."""
    rng = random.Random(seed)
    for _ in range(10):   # a change that re-signing undoes is tried again
        img = Img({s: bytearray(b) for s, b in tpl.segs.items()}, tpl.salt)
        keep: set = set()
        change = rng.choice(CHANGES)(rng, img, tpl.recs, keep)
        resign(img, tpl.places, keep)
        if any(img.segs[s] != tpl.segs[s] for s in img.segs):
            break
    else:
        raise AssertionError(f"seed {seed}: no change survived re-signing")
    shutil.copytree(tpl.path, work)
    for segno, data in img.segs.items():
        if data != tpl.segs[segno]:
            with open(os.path.join(work, fmt.segment_name(segno)), "r+b") as f:
                f.write(data)
    hint = os.path.join(work, HINT_NAME)
    segno, slot, _, _ = fmt.decode_hint(tpl.hint, tpl.salt)
    if rng.random() < 0.5:
        off = slot * PAGE
        length = img.word(segno, off + 12, 4)
        if fmt.RECORD_BLOCK <= length and off + length <= len(img.segs[segno]):
            with open(hint, "wb") as f:
                f.write(fmt.encode_hint(tpl.salt, segno, slot, img.word(segno, off + 16),
                                        img.word(segno, off + length - 8)))
            change.text += " (hint re-signed)"
    else:
        os.unlink(hint)
    return change


# -- exercising the damaged image -------------------------------------------------------


class Finding(AssertionError):
    """A behaviour the damage may not cause."""


def legitimate(tpl: Template, change: Change, page_no: int, data: bytes) -> bool:
    """Is data some version of page_no: zeros, the planted page, or what a commit wrote?"""
    if data == ZERO_PAGE or change.planted == (page_no, data):
        return True
    m, q = struct.unpack_from("<QQ", data)
    return (q == page_no and 0 < m <= tpl.newest and page_no in tpl.hist.writes[m]
            and data == corruption.content(m, page_no))


def probe(tpl: Template, change: Change, store, at: int, pages, events: set, what: str) -> None:
    """Read pages of a store or view at commit `at`, each legitimate or CorruptImage."""
    for p in pages:
        try:
            data = store.read(p)
        except CorruptImage:
            events.add(f"{what} refused")
            continue
        if not legitimate(tpl, change, p, data):
            raise Finding(f"{what}: page {p} at commit {at} read bytes no commit wrote to it: "
                          f"{data[:16].hex()}")
        if change.benign and data != tpl.hist.expected(at, p):
            raise Finding(f"{what}: page {p} at commit {at} reads commit "
                          f"{struct.unpack_from('<Q', data)[0]}'s bytes after a benign change")


def views(tpl: Template, change: Change, store, rng: random.Random, events: set) -> None:
    """View the head, the commit before it, commit 0 and a random one."""
    head = store.head
    for v in sorted({head, head - 1, 0, rng.randint(0, max(head, 0))}):
        try:
            view = store.view(v)
        except KeyError:
            events.add("view gone")
            continue
        except CorruptImage:
            events.add("view refused")
            continue
        with view:
            written = tpl.hist.writes[v] if 0 <= v <= tpl.newest else ()
            probe(tpl, change, view, v, list(written) + rng.sample(tpl.pages, 3), events,
                  "view read")


def examine(tpl: Template, change: Change, store, rng, events: set) -> None:
    """Read every page and a few never written, check(), list and view commits."""
    probe(tpl, change, store, store.head, tpl.pages + [DENSE_PAGES + 1, NEW_PAGE, (1 << 40) - 1],
          events, "read")
    try:
        counts = store.check()
        if counts["head"] != store.head:
            raise Finding(f"check() reports head {counts['head']}, the store {store.head}")
    except CorruptImage:
        events.add("check refused")
    try:
        store.commits()
    except CorruptImage:
        events.add("commits refused")
    views(tpl, change, store, rng, events)


def write_and_commit(tpl: Template, store, rng, events: set) -> int | None:
    """Overwrite a few pages, add one, free one and commit: the new head, or None."""
    for p in rng.sample(tpl.pages, 3) + [NEW_PAGE]:
        try:
            store.write(p, b"hostile %d" % p)
        except CorruptImage:
            events.add("write refused")
    try:
        store.free(rng.choice(tpl.pages))
    except CorruptImage:
        events.add("write refused")
    before = store.head
    try:
        n = store.commit(b"after the damage")
    except CorruptImage:
        events.add("commit refused")
        return None
    if n != before + 1:
        raise Finding(f"commit() after head {before} returned {n}")
    events.add("committed")
    return n


def exercise(tpl: Template, change: Change, path: str, seed: int) -> list[str]:
    """Open as reader, then as writer; examine each; commit; reopen.  The events seen."""
    rng = random.Random(seed ^ 0x5EED)
    events: set[str] = set()
    reader_head = None
    try:
        with PageStore.open(path, readonly=True) as reader:
            reader_head = reader.head
            examine(tpl, change, reader, rng, events)
    except CorruptImage:
        events.add("reader refused")
    try:
        store = PageStore.open(path)
    except CorruptImage:
        if reader_head is not None:
            raise Finding(f"a reader opened at commit {reader_head}; the writer refused")
        events.add("open refused")
        return sorted(events)
    with store:
        if store.head != reader_head:
            raise Finding(f"the writer opened at commit {store.head}, a reader at {reader_head}")
        examine(tpl, change, store, rng, events)
        n = write_and_commit(tpl, store, rng, events)
    if n is not None:
        try:
            with PageStore.open(path, readonly=True) as again:
                mark = b"hostile %d" % NEW_PAGE
                if again.head != n or again.read(NEW_PAGE)[:len(mark)] != mark:
                    raise Finding(f"reopened at commit {again.head} without commit {n}'s page")
        except CorruptImage as exc:
            # Writing on after check() refused may ruin the image further (a
            # forged entry can name a free slot that the commit then fills);
            # after a clean check() and clean reads, a commit must reopen.
            if not events & {"read refused", "check refused"}:
                raise Finding(f"acknowledged commit {n} does not reopen: {exc}") from exc
            events.add("reopen refused")
    return sorted(events)


def outcome(events: list[str], warned: bool) -> str:
    """The seed's headline: where CorruptImage first stopped it, else whether it warned."""
    for kind in ("open refused", "read refused", "check refused"):
        if kind in events:
            return kind
    return "warned" if warned else "clean"


def run_seed(tpl: Template, root: str, seed: int) -> None:
    """One seed, reported on stdout: SEED before the damage is exercised, then DONE or FAIL."""
    work = os.path.join(root, f"s{seed}.image")
    shutil.rmtree(work, ignore_errors=True)
    faulthandler.dump_traceback_later(SEED_SECONDS, exit=True)
    try:
        change = make_damaged(tpl, work, seed)
        print(f"SEED {seed} {change.text}", flush=True)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                events = exercise(tpl, change, work, seed)
            others = [f"{w.category.__name__}: {w.message}" for w in caught
                      if w.category is not RecoveryWarning]
            if others:
                raise Finding(f"warnings other than RecoveryWarning: {others}")
            if change.benign:
                if caught or events != ["committed"]:
                    raise Finding(f"a benign change showed: {events}, "
                                  f"{[str(w.message) for w in caught]}")
                events.append("benign")
        except Exception as exc:   # noqa: BLE001 - any other exception is the finding
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print("FAIL", json.dumps({"seed": seed, "change": change.text,
                                      "error": f"{type(exc).__name__}: {exc}",
                                      "at": f"{where.filename}:{where.lineno} in {where.name}"}),
                  flush=True)
        else:
            print("DONE", json.dumps({"seed": seed, "outcome": outcome(events, bool(caught)),
                                      "events": events}), flush=True)
    finally:
        faulthandler.cancel_dump_traceback_later()
        shutil.rmtree(work, ignore_errors=True)


def child_main(pristine: str, root: str, lo: str, hi: str) -> None:
    """The body of a child process: seeds lo..hi-1 against the template at pristine."""
    faulthandler.enable()
    tpl = Template(pristine)
    for seed in range(int(lo), int(hi)):
        run_seed(tpl, root, seed)


# -- the harness: child processes, one after another ----------------------------------

HARNESS = ("import sys; sys.path.insert(0, {tests!r}); import test_pager_hostile as h; "
           "h.child_main(*sys.argv[1:])")


def run_batch(pristine: str, root: str, lo: int, hi: int, failures: list,
              outcomes: collections.Counter, events: collections.Counter) -> int:
    """Run seeds lo.. in one child until it ends; the seed to resume from."""
    code = HARNESS.format(tests=os.path.dirname(os.path.abspath(__file__)))
    started, finished = None, lo - 1

    def on_line(tag: str, rest: str) -> None:
        nonlocal started, finished
        if tag == "SEED":
            seed, _, text = rest.partition(" ")
            started = (int(seed), text)
        elif tag == "DONE":
            report = json.loads(rest)
            outcomes[report["outcome"]] += 1
            events.update(report["events"])
            finished = report["seed"]
        elif tag == "FAIL":
            report = json.loads(rest)
            failures.append(f"seed {report['seed']} [{report['change']}]: "
                            f"{report['error']} (at {report['at']})")
            finished = report["seed"]

    rc, stalled, stderr = follow([sys.executable, "-c", code, pristine, root, str(lo), str(hi)],
                                 os.path.join(root, f"stderr-{lo}.txt"), STALL_SECONDS, on_line)
    if rc == 0 and not stalled:
        return hi
    seed, text = started if started and started[0] > finished else (finished + 1, "?")
    if stalled or "Timeout (" in stderr:
        how = f"hung (no progress for {STALL_SECONDS if stalled else SEED_SECONDS} s)"
    else:
        how = f"died (exit status {rc})"
    failures.append(f"seed {seed} [{text}]: the child {how}\n{stderr[-3000:]}")
    return seed + 1


def run_fuzz(pristine: str, root: str, seeds: range) -> tuple[list[str], collections.Counter,
                                                                  collections.Counter]:
    """Every seed, in child processes restarted after a crash or hang: the failures,
    each seed's outcome, and how many seeds saw each event."""
    failures: list[str] = []
    outcomes: collections.Counter = collections.Counter()
    events: collections.Counter = collections.Counter()
    lo = seeds.start
    while lo < seeds.stop:
        lo = run_batch(pristine, root, lo, seeds.stop, failures, outcomes, events)
    return failures, outcomes, events


def assert_fuzz(pristine: str, root: str, seeds: range) -> None:
    started = time.monotonic()
    failures, outcomes, events = run_fuzz(pristine, root, seeds)
    summary = (f"{len(seeds)} seeds in {time.monotonic() - started:.1f} s; outcomes "
               f"{dict(outcomes)}; events {dict(events)}")
    print(summary)
    assert not failures, f"{len(failures)} failures\n" + "\n".join(failures[:30])
    assert sum(outcomes.values()) == len(seeds), summary
    for kind in ("clean", "open refused"):
        assert outcomes[kind] >= MIN_EACH_OUTCOME, summary
    assert outcomes["read refused"] + outcomes["check refused"] >= MIN_EACH_OUTCOME, summary


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("hostile") / "pristine.image")
    build_template(path)
    return path


class TestHostileDamage:
    def test_template_reads_as_modelled(self, pristine):
        """The undamaged template opens quietly, reads as the model says and passes check()."""
        tpl = Template(pristine)
        with corruption.open_quietly(pristine, readonly=True) as store:
            assert store.head == tpl.newest
            tpl.hist.assert_state(store, store.head)
            store.check()

    def test_resigning_alone_changes_nothing(self, pristine, tmp_path):
        """Re-signing the undamaged template rewrites no byte of it."""
        tpl = Template(pristine)
        img = Img({s: bytearray(b) for s, b in tpl.segs.items()}, tpl.salt)
        resign(img, tpl.places, set())
        assert all(img.segs[s] == tpl.segs[s] for s in img.segs)

    def test_hostile_changes(self, pristine, tmp_path):
        """300 seeded re-signed changes: each seed ends in an allowed outcome, in a child process."""
        assert_fuzz(pristine, str(tmp_path), DEFAULT_SEEDS)

    @pytest.mark.soak
    @pytest.mark.skipif(os.environ.get("IMAGO_SOAK") != "1", reason="set IMAGO_SOAK=1 to soak")
    def test_hostile_changes_soak(self, pristine, tmp_path):
        """2,000 more seeded re-signed changes, each ending in an allowed outcome."""
        assert_fuzz(pristine, str(tmp_path), SOAK_SEEDS)


def replay(seeds: list[int]) -> None:
    """Run seeds in this process against a fresh template, showing each traceback."""
    import tempfile
    root = tempfile.mkdtemp(prefix="hostile-")
    try:
        build_template(os.path.join(root, "pristine.image"))
        tpl = Template(os.path.join(root, "pristine.image"))
        for seed in seeds:
            work = os.path.join(root, f"s{seed}.image")
            change = make_damaged(tpl, work, seed)
            print(f"seed {seed}: {change.text}", flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                print(f"  events: {exercise(tpl, change, work, seed)}")
            shutil.rmtree(work)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    replay([int(a) for a in sys.argv[1:]])
