"""Versions compared: the changes journal, history of a global, diff, replay sources.

THE CHANGES JOURNAL is written by the Scheme layer in the heap, in
``img.system["scheme"]["journal"]``: one entry (n, commit, time, form text)
per top-level form that changed the image, made in the form's own
transaction with the number of the commit that form makes.  Because it is in
the heap it travels with the version: a view of commit C reads the journal
of C's line up to C, and booting an older snapshot rewinds it too, so the
entries made after that snapshot are read from the line that was left (a
branch tip, read through a view).  Entry numbers n count per line.

FINGERPRINTS.  "Changed" compares content, not identity: a global's value is
walked (vectors, tables, pairs, strings, records and stored procedures by
their slots, blobs by hash) into a BLAKE2b digest, so a vector or a table
mutated in place is caught.  The walk is bounded: FINGERPRINT_NODES values at
most, and every vector's and table's length is always part of the digest; a
change deeper than that in a bigger value is not seen.  Shared structure and
cycles are walked once (a back-reference after that).

A LINE'S ORIGIN is its oldest version on disk that holds an object memory.
The journal entries that version already held were made before it, in
commits this image does not have: by the image a bundle was exported from
(their numbers are that image's, and may equal later commits of this one),
or in versions vacuum removed.  They are read as made by the origin: the
origin stands for all of them (an import's head, or the oldest version
vacuum kept).  Entries are told apart by position, not by commit number:
the journal grows at its end only, so the origin's entries are the first
ones of every later version's journal.  A normal image's origin is its
formatting commit, whose journal is empty.

HISTORY OF AN IMPORTED IMAGE.  Its line's origin is the import's head: the
one version that stands for every form made before the export.  history
shows there a single "defined" version (the global's value at the export),
listing the pre-export forms that name the global (all of them if none
does); the changes made between those forms are not on disk and are not
shown.  Forms made after the import follow, a version each
(tests/test_versions.py, test_history_of_an_imported_image).

HISTORY, FAST.  The reference opens a view of every sampled version
(history_reference).  history opens a version only when a commit since the
last version it opened may have changed the global, and decides that by
comparing bytes, without a view: every commit's record lists the pages it
wrote, each written whole into the commit's own slots, so the pager can hand
out a page as a commit wrote it (PageStore.written_pages(), each page checked
against its sum).  A version's state is its parent's with the pages its
commit wrote replaced and the pages it freed dropped, so the bytes of a page
at a later sample are those its newest writer in between wrote.

WHAT IS WATCHED (watch_of; the WATCH of a global in the version last opened:
byte spans per page, and their bytes then).  Everything that decides
fingerprint(root[name]) and name in root, as native/objmem.c reads it:
- the M_ROOT meta word, which every commit record carries (compared per commit);
- the root table's object (header, count, used, store): a table that grows,
  rehashes or is rebuilt changes it (a new global opens a version);
- its store's header and its capacity and index size;
- name present: the run of filled index slots that ends at the slot naming
  its entry (the probe starts at the key's home slot, somewhere in that run,
  and stops at an empty slot), the hash and key of every entry those slots
  name, the whole entry (its value word), and the key's string object
  (without an index: the hash and key of every entry before it);
- name absent: every index slot, and the hash and key of every used entry
  (a probe may stop anywhere); value words are not watched, so a set! of
  another global does not open a version;
- every byte of every object the value reaches, header to padded end
  (pointer slots followed, as the collector follows them).
A sample is not opened when no commit since changed M_ROOT or freed a
watched page, each commit's own record is on disk (vacuum's records list
copies, not what a commit wrote: then the sample is opened), and for each
watched page its newest writer left the watched spans' bytes as they were.
Then the sample reads the very bytes the last opened version read, so it has
the same fingerprint, and the same watch.  Exactness does not lean on how
objects are allocated: a freed and reused address is compared by its bytes.
A watch is not kept (every sample opened) past WATCH_OBJECTS objects or
WATCH_BYTES bytes.  The versions that are opened share the read of the
log from their checkpoint (PageStore.view's scans: they go in ascending
order).  Measured (bench/bench_snapshots.py, 4): 10,004 journal entries of
a Scheme session in 1.6 s, 14 versions opened, where the reference takes
about 33 ms a version (1,000 entries: 33 s).

INVARIANTS
1. Nothing here writes: versions are read through views (img.at), each
   closed before the function returns.
2. A journal entry is used only from the line that holds it: entries are
   read from the view of that line's tip.
3. Every commit a journal entry names is a version of its line: the
   entries the origin held name the origin (line_journal; check_line_journal
   verifies it).
4. history answers exactly what history_reference does (check_history;
   the tests compare them on seeded random forms).
"""
from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, replace
from typing import Any, Iterator

import image
from image import meta_block_of

from snapshots._branches import Branch, branches, branch_named, require_version, version_of

# Enough for any global a person reads in a diff (tens of thousands of
# items), small enough that a diff of a large image stays well under a second.
FINGERPRINT_NODES = 50_000
_END = b")"
_PLAIN = frozenset((int, float, str, bytes, bool, type(None)))
_EMPTY = object()


@dataclass(frozen=True)
class Change:
    """One journal entry: its number on its line, the commit its form made, when, the form."""
    n: int
    commit: int
    time: float
    form: str

    def as_json(self) -> dict:
        return {"n": self.n, "commit": self.commit, "time": self.time, "form": self.form}


@dataclass(frozen=True)
class Version:
    """A version in which a global changed: how (defined, changed, removed), and the
    forms that made that commit (empty when no journaled form did: the Python API)."""
    commit: int
    time: float | None
    how: str
    forms: tuple[str, ...]


@dataclass(frozen=True)
class Diff:
    """Globals added, removed and changed from one version to another (sorted names)."""
    added: list[str]
    removed: list[str]
    changed: list[str]


# -- the journal ------------------------------------------------------------------------

def journal(img: image.Image) -> list[Change]:
    """The changes journal of img's version, oldest first, as stored: the
    commit numbers are those of the image that made each entry (changes and
    history read them through line_journal)."""
    system = img.system
    state = system.get("scheme") if hasattr(system, "get") else None
    entries = state.get("journal") if hasattr(state, "get") else None
    if entries is None:
        return []
    return [Change(int(e[0]), int(e[1]), float(e[2]), str(e[3])) for e in entries]


def journal_at(img: image.Image, commit: int) -> list[Change]:
    """The journal of the version commit (read through a view)."""
    require_version(img, commit)
    with img.at(commit) as view:
        return journal(view)


def changes(img: image.Image, since: int | None = None, branch: str | None = None) -> list[Change]:
    """The journal entries of a branch's line (default: the current one) made after commit since."""
    tip = version_of(img) if branch is None else branch_named(img, branch).tip
    if since is not None:
        require_version(img, since)
    entries = line_journal(img, tip)
    return [c for c in entries if since is None or c.commit > since]


def line_journal(img: image.Image, tip: int, commits: list | None = None) -> list[Change]:
    """The journal of the line ending at tip, the entries its origin already
    held naming the origin (see A LINE'S ORIGIN; invariant 3).  commits:
    the store's commits() when the caller has them."""
    entries = _journal_of_version(img, tip)
    origin, inherited = _origin(img, tip, commits)
    if not inherited:
        return entries
    return [replace(c, commit=origin) if i < inherited else c for i, c in enumerate(entries)]


def _journal_of_version(img: image.Image, commit: int) -> list[Change]:
    return journal(img) if commit == version_of(img) else journal_at(img, commit)


def _origin(img: image.Image, tip: int, commits: list | None) -> tuple[int, int]:
    """The origin of tip's line and how many journal entries it held (0, 0 if none)."""
    records = {c.number: c for c in (commits if commits is not None else _writer_store(img).commits())}
    origin, commit = None, tip
    while commit in records:
        if meta_block_of(records[commit].meta):
            origin = commit
        commit = records[commit].parent
    if origin is None:
        return 0, 0
    return origin, len(_journal_of_version(img, origin))


def check_line_journal(img: image.Image, tip: int) -> None:
    """Invariant 3: every entry of tip's line journal names a version of that line."""
    on_line = set(line_of(img, tip))
    stray = [c for c in line_journal(img, tip) if c.commit not in on_line]
    if stray:
        raise AssertionError(f"journal entries name commits off the line of {tip}: {stray}")


# -- lines of commits --------------------------------------------------------------------

def line_of(img: image.Image, tip: int) -> list[int]:
    """The commits of the line that ends at tip, oldest first (by parents)."""
    parents = {c.number: c.parent for c in _writer_store(img).commits()}
    if tip not in parents:
        raise ValueError(f"there is no version {tip}")
    line, commit = [], tip
    while commit is not None:
        line.append(commit)
        commit = parents.get(commit)
    return line[::-1]


def _writer_store(img: image.Image) -> Any:
    store = img.store
    if not hasattr(store, "commits"):
        raise ValueError("a view of one version has no history: ask the image it came from")
    return store


def replay_source(img: image.Image, since: int, branch: str | None = None) -> tuple[Branch, list[Change]]:
    """Where replay reads: the branch named, else the branch (not the current
    one) whose line passes through since and whose journal has entries after
    it; of several, the most recent tip.  Returns it and those entries."""
    require_version(img, since)
    if branch is not None:
        source = branch_named(img, branch)
        if since not in line_of(img, source.tip):
            raise ValueError(f"version {since} is not on branch {branch!r}'s line")
        return source, changes(img, since, branch)
    found = []
    for b in branches(img):
        if b.current or since not in line_of(img, b.tip):
            continue
        entries = [c for c in line_journal(img, b.tip) if c.commit > since]
        if entries:
            found.append((b.tip, b, entries))
    if not found:
        raise ValueError(f"no other branch has journal entries after version {since} "
                         "(name one with --from BRANCH)")
    _, source, entries = max(found, key=lambda f: f[0])
    return source, entries


# -- fingerprints, diff and history ----------------------------------------------------------

def fingerprint(value: Any, budget: int = FINGERPRINT_NODES) -> bytes:
    """A digest of value's content, bounded (see the module docstring)."""
    digest = hashlib.blake2b(digest_size=16)
    seen: dict[int, int] = {}
    stack: list[Iterator] = [iter((value,))]
    nodes = 0
    while stack:
        x = next(stack[-1], _EMPTY)
        if x is _EMPTY:
            stack.pop()
            digest.update(_END)
            continue
        nodes += 1
        if nodes > budget:
            digest.update(b"...")
            break
        token, children = _token(x, seen)
        digest.update(token)
        if children is not None:
            stack.append(children)
    return digest.digest()


def _token(x: Any, seen: dict[int, int]) -> tuple[bytes, Iterator | None]:
    """What x contributes to a fingerprint, and the values inside it (None: a leaf)."""
    if type(x) in _PLAIN:   # most values inside data: no handle to look for
        return b"%s:%s;" % (type(x).__name__.encode(), repr(x).encode()), None
    addr = _address(x)
    if addr is None:
        if isinstance(x, tuple):
            return b"t(%d" % len(x), iter(x)
        return f"{type(x).__name__}:{x!r};".encode(), None
    if addr in seen:
        return b"@%d;" % seen[addr], None
    seen[addr] = len(seen)
    if isinstance(x, image.Vector):
        return b"v(%d" % len(x), iter(x)
    if isinstance(x, image.Table):
        return b"h(%d" % len(x), _table_items(x)
    if isinstance(x, image.Blob):
        return b"b:" + bytes(x.hash) + b";", None
    return _object_token(x, addr)


def _table_items(table: image.Table) -> Iterator:
    """Keys and values in an order that does not depend on the table's layout
    (small tables sorted; a table past the budget in stored order)."""
    if len(table) > FINGERPRINT_NODES:
        return itertools.chain.from_iterable(table.items())
    items = sorted(table.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
    return itertools.chain.from_iterable(items)


def _object_token(x: Any, addr: int) -> tuple[bytes, Iterator | None]:
    """Any other object of the image (pair, string, record, procedure): its
    class and its slots, read through the heap."""
    heap = x._heap
    try:
        size = heap.size(addr)
        slots = [heap.slot(addr, i) for i in range(size)]
    except Exception:   # a byte object the heap reads only whole: its address stands for it
        return b"o@%d;" % addr, None
    return b"o%d(%d" % (heap.class_of(addr), size), iter(slots)


def _address(x: Any) -> int | None:
    """The image address of a handle (any layer's), else None."""
    try:
        heap, addr = x._heap, x._addr
    except AttributeError:
        return None
    return addr if heap is not None and isinstance(addr, int) else None


def globals_of(img: image.Image) -> dict[str, bytes]:
    """Each global of img's version (the root's str keys) -> its fingerprint."""
    return {name: fingerprint(value) for name, value in img.root.items() if isinstance(name, str)}


def diff(img: image.Image, older: int, newer: int) -> Diff:
    """The globals added, removed and changed from version older to version newer."""
    a, b = _globals_at(img, older), _globals_at(img, newer)
    return Diff(sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys()),
                sorted(n for n in a.keys() & b.keys() if a[n] != b[n]))


def _globals_at(img: image.Image, commit: int) -> dict[str, bytes]:
    require_version(img, commit)
    with img.at(commit) as view:
        return globals_of(view)


def history(img: image.Image, name: str, tip: int | None = None) -> list[Version]:
    """The versions of the line ending at tip (default: the current version)
    in which global name was defined, changed or removed, oldest first.
    Versions are sampled at the commits of the journal's forms, and at the
    tip (a change made by the Python API shows there, with no form).  A
    version several forms made (a line's origin stands for all the forms
    before it) lists those of them that name the global, if any do: the
    states between them are not on disk to tell which did it.  A sample
    in which no commit since changed a watched byte is not opened (HISTORY, FAST)."""
    return _history(img, name, tip, _WatchScan)


def history_reference(img: image.Image, name: str, tip: int | None = None) -> list[Version]:
    """history the slow way: a view of every sampled version (the reference
    check_history compares history with)."""
    return _history(img, name, tip, _EveryVersionScan)


def check_history(img: image.Image, name: str, tip: int | None = None) -> list[Version]:
    """Invariant 4: history (skipping by watched bytes) answers exactly what
    history_reference (a view per sample) does.  Returns that answer."""
    fast, slow = history(img, name, tip), history_reference(img, name, tip)
    if fast != slow:
        raise AssertionError(f"history of {name!r} skipped a change: {fast} != {slow}")
    return fast


def _history(img: image.Image, name: str, tip: int | None, scan_class: Any) -> list[Version]:
    tip = version_of(img) if tip is None else tip
    require_version(img, tip)
    written = _writer_store(img).written_pages()
    commits = written.commits()
    line = _line_records(commits, tip)
    on_line = {c.number for c in line}
    forms: dict[int, list[str]] = {}
    for c in line_journal(img, tip, commits):
        if c.commit in on_line:
            forms.setdefault(c.commit, []).append(c.form)
    times = {c.number: c.time for c in commits}
    scan = scan_class(img, name, line, written)
    found, before = [], None
    for commit in sorted(set(forms) | {tip}):
        now = scan.fingerprint_at(commit)
        if now != before:
            how = "removed" if now is None else "defined" if before is None else "changed"
            found.append(Version(commit, times.get(commit), how, _forms_naming(forms.get(commit, []), name)))
        before = now
    return found


def _line_records(commits: list, tip: int) -> list:
    """The CommitInfo of each commit of the line ending at tip, oldest first."""
    by_number = {c.number: c for c in commits}
    if tip not in by_number:
        raise ValueError(f"there is no version {tip}")
    line, commit = [], by_number[tip]
    while commit is not None:
        line.append(commit)
        commit = by_number.get(commit.parent) if commit.parent is not None else None
    return line[::-1]


def _fingerprint_at(img: image.Image, commit: int, name: str) -> bytes | None:
    with img.at(commit) as view:
        root = view.root
        return fingerprint(root[name]) if name in root else None


class _EveryVersionScan:
    """The reference: every sampled version opened (img.at) and fingerprinted."""

    def __init__(self, img: image.Image, name: str, line: list, written: Any = None) -> None:
        self.img, self.name = img, name
        self.opened = 0

    def fingerprint_at(self, commit: int) -> bytes | None:
        self.opened += 1
        return _fingerprint_at(self.img, commit, self.name)


class _WatchScan:
    """Walks a line's samples in ascending order, opening a version only when
    a commit since the last one opened changed a byte of that version's watch
    (or moved the root, or cannot be compared): see HISTORY, FAST.  opened
    counts the versions opened; the views share one read of the log (scans)."""

    def __init__(self, img: image.Image, name: str, line: list, written: Any) -> None:
        self.img, self.name, self.line, self.written = img, name, line, written
        self.store = _writer_store(img)
        self.position = {c.number: i for i, c in enumerate(line)}
        self.opened = 0
        self._scans: dict = {}               # the log read from each checkpoint, shared
        self._at = -1                        # line position of the last version read
        self._value: bytes | None = None     # its fingerprint
        self._watch: _Watch | None = None    # its watch; None: open every time
        self._root = b""                     # its M_ROOT word

    def fingerprint_at(self, commit: int) -> bytes | None:
        to = self.position[commit]
        if to < self._at:
            raise ValueError(f"samples go in ascending order: {commit} is before the last one")
        if not self._unchanged(self._at + 1, to):
            self._read(commit)
        self._at = to
        return self._value

    def _unchanged(self, first: int, last: int) -> bool:
        """Whether the commits line[first..last] left every watched byte as it
        was.  Newest first: a page's bytes at line[last] are those its newest
        writer in the interval wrote, so only that writer is compared."""
        watch = self._watch
        if watch is None:
            return False
        written, settled = self.written, set()
        for c in reversed(self.line[first:last + 1]):
            if _root_word(c.meta) != self._root or c.number not in written:
                return False
            if not watch.pages.isdisjoint(written.freed(c.number)):
                return False   # a watched page left the page table: reads as zeros now
            for page_no in watch.pages.intersection(c.pages).difference(settled):
                if not watch.same(page_no, written.page(c.number, page_no)):
                    return False
                settled.add(page_no)
        return True

    def _read(self, commit: int) -> None:
        self.opened += 1
        with _open_version(self.store, commit, self._scans) as version:
            root = version.root
            self._value = fingerprint(root[self.name]) if self.name in root else None
            self._root = _root_word(version.store.meta)
            self._watch = watch_of(version, self.name)
        _keep_newest_scan(self._scans)


def _open_version(store: Any, commit: int, scans: dict) -> image.Image:
    """A read-only image of commit, its view resolved with the shared scans."""
    view = store.view(commit, scans)
    try:
        return image.Image(view)
    except BaseException:
        view.close()
        raise


def _keep_newest_scan(scans: dict) -> None:
    """Versions are opened in ascending order: only the log read from the
    newest checkpoint (the last one added) can serve the next one."""
    for key in list(scans)[:-1]:
        del scans[key]


def _root_word(record_meta: bytes) -> bytes:
    """The M_ROOT meta word a commit record carries (b"" if it carries no object memory)."""
    block = meta_block_of(record_meta)
    at = 8 * image.LAYOUT["M_ROOT"]
    return block[at:at + 8]


# -- watches (the bytes that reading a global reads) -------------------------------------

# Past this many objects a global's watch is not kept: its versions are all
# opened (a walk of that size costs about what opening a version does).
WATCH_OBJECTS = 200_000
# Past this many watched bytes (kept in memory to compare with), the same.
WATCH_BYTES = 64 << 20
_PAGE0_BYTES = image.LAYOUT["META_WORDS"] * 8
_TAG_MASK, _TAG_PTR = 7, 0
_FMT_POINTERS, _FMT_BYTES = 0, 1
_SIZE_OVERFLOW = 0xFFFFFF
_EMPTY_INDEX_SLOT = ((-1 << 3) | 1) & (1 << 64) - 1   # FX(-1): an index slot naming no entry
_STRING_CLASS = 3                   # C_STRING in native/objmem.c
_ENTRY, _HASH_AND_KEY = 24, 16      # a table entry's bytes: (hash, key, value) words


class _Watch:
    """The WATCH of a global in one version: per page, the byte spans
    (offsets in the page, ascending, disjoint) whose bytes decide its
    fingerprint, and those bytes as that version has them."""

    def __init__(self, spans: dict[int, list[tuple[int, int]]], expected: dict[int, bytes]) -> None:
        self.spans, self.expected = spans, expected
        self.pages = frozenset(spans)

    @classmethod
    def read(cls, store: Any, ranges: list[tuple[int, int]]) -> _Watch | None:
        """The watch of the (address, length) ranges, read through store (a
        version's pages); None past WATCH_BYTES."""
        spans = _page_spans(ranges, store.page_size)
        if sum(hi - lo for runs in spans.values() for lo, hi in runs) > WATCH_BYTES:
            return None
        return cls(spans, {page_no: _join(store.read(page_no), runs) for page_no, runs in spans.items()})

    def same(self, page_no: int, page: bytes) -> bool:
        """Whether page (page_no's bytes in another version) holds the watched bytes unchanged."""
        return _join(page, self.spans[page_no]) == self.expected[page_no]

    def check(self) -> None:
        """Spans lie in their page, ascending and apart; the bytes kept match them."""
        for page_no, runs in self.spans.items():
            ends = [0] + [x for span in runs for x in span]
            if ends != sorted(ends) or any(lo >= hi for lo, hi in runs):
                raise AssertionError(f"page {page_no}: spans out of order: {runs}")
            if len(self.expected[page_no]) != sum(hi - lo for lo, hi in runs):
                raise AssertionError(f"page {page_no}: {len(self.expected[page_no])} bytes kept "
                                     f"for spans {runs}")


def _join(page: bytes, runs: list[tuple[int, int]]) -> bytes:
    return b"".join([page[lo:hi] for lo, hi in runs])


def _page_spans(ranges: list[tuple[int, int]], page_size: int) -> dict[int, list[tuple[int, int]]]:
    """The ranges cut at page boundaries, per page, overlapping or touching ones merged."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for addr, length in sorted(ranges):
        end = addr + length
        while addr < end:
            page_no, lo = divmod(addr, page_size)
            hi = min(page_size, lo + end - addr)
            runs = spans.setdefault(page_no, [])
            if runs and runs[-1][1] >= lo:
                runs[-1] = (runs[-1][0], max(runs[-1][1], hi))
            else:
                runs.append((lo, hi))
            addr += hi - lo
    return spans


def watch_of(view: image.Image, name: str) -> _Watch | None:
    """The watch of global name in view (a read-only image of one version):
    the bytes the root table's lookup of name reads, and every byte of every
    object reachable from its value.  None when the value reaches more than
    WATCH_OBJECTS objects or the watch exceeds WATCH_BYTES."""
    reader = _RawHeap(view.store)
    root = int.from_bytes(_root_word(view.store.meta), "little")
    ranges: list[tuple[int, int]] = []
    word = reader.lookup(root, name, ranges)
    if word is not None and not reader.reachable(word, ranges):
        return None
    return _Watch.read(view.store, ranges)


class _RawHeap:
    """Objects read as bytes through a page view: headers, extents, and the
    root table's store, laid out as native/objmem.c says (WORDS, OBJECTS,
    "the table").  Used only to find what to watch; values are decoded by
    the heap.  Ranges are (address, length) pairs."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def object(self, addr: int) -> tuple[int, int, int, int]:
        """(format, class, body address, size in slots or bytes) of the object at addr."""
        if addr < _PAGE0_BYTES or addr & _TAG_MASK:
            raise image.CorruptObject(f"object at {addr:#x}: not an object's address", addr)
        header = self.store.read_word(addr)
        fmt, size, cls = header & 0xF, (header >> 8) & 0xFFFFFF, header >> 44
        body = addr + 8
        if size == _SIZE_OVERFLOW:
            size, body = self.store.read_word(body), body + 8
        return fmt, cls, body, size

    def add_object(self, ranges: list, addr: int) -> tuple[int, int, int, int]:
        """Adds the object at addr (header to padded end); returns object(addr)."""
        found = self.object(addr)
        fmt, _, body, size = found
        length = (size + 7) & ~7 if fmt == _FMT_BYTES else 8 * size
        ranges.append((addr, body - addr + length))
        return found

    def words(self, addr: int, count: int) -> memoryview:
        return memoryview(self.store.read_bytes(addr, 8 * count)).cast("Q")

    def reachable(self, word: int, ranges: list) -> bool:
        """Adds every object word reaches (False: more than WATCH_OBJECTS)."""
        seen: set[int] = set()
        todo = [word]
        while todo:
            w = todo.pop()
            if w == 0 or w & _TAG_MASK != _TAG_PTR or w in seen:
                continue
            if len(seen) >= WATCH_OBJECTS:
                return False
            seen.add(w)
            fmt, _, body, size = self.add_object(ranges, w)
            if fmt == _FMT_POINTERS and size:
                todo.extend(self.words(body, size))
        return True

    def lookup(self, table: int, name: str, ranges: list) -> int | None:
        """Adds what the lookup of name in the table at address table reads
        (see WHAT IS WATCHED); returns name's value word (None when absent)."""
        _, _, tbody, _ = self.add_object(ranges, table)   # count, used, store
        header = self.words(tbody, 3)
        used, store = header[1] >> 3, header[2]
        _, _, sbody, _ = self.object(store)
        index_size = self.words(sbody, 2)[1] >> 3   # after the capacity, a fixnum
        ranges.append((store, sbody - store + 16))
        index, entries = sbody + 16, sbody + 16 + 8 * index_size
        found = self._find(entries, used, name)
        if found is None:   # a probe may stop anywhere: every slot and every key counts
            ranges.append((index, 8 * index_size))
            ranges.extend((entries + _ENTRY * e, _HASH_AND_KEY) for e in range(used))
            return None
        self._add_probe(index, index_size, entries, found, ranges)
        entry = self.words(entries + _ENTRY * found, 3)
        if entry[1] & _TAG_MASK == _TAG_PTR:
            self.add_object(ranges, entry[1])
        return entry[2]

    def _find(self, entries: int, used: int, name: str) -> int | None:
        """The entry number whose key is the string name (a short string
        immediate, or a string object), else None."""
        raw = name.encode("utf-8")
        short = (len(raw) << 3 | 3 | int.from_bytes(raw, "little") << 8) if len(raw) <= 7 else None
        slots = self.words(entries, 3 * used) if used else ()
        for e in range(used):
            key = slots[3 * e + 1]
            if key == short or (short is None and key & _TAG_MASK == _TAG_PTR and key
                                and self._string_is(key, raw)):
                return e
        return None

    def _string_is(self, addr: int, raw: bytes) -> bool:
        _, cls, body, size = self.object(addr)
        return cls == _STRING_CLASS and size == len(raw) and self.store.read_bytes(body, size) == raw

    def _add_probe(self, index: int, index_size: int, entries: int, found: int, ranges: list) -> None:
        """What a probe for entry found reads.  A store without an index is
        scanned from entry 0; an indexed one is probed from the key's home
        slot, which lies in the run of filled slots that ends at the slot
        naming found (a probe stops at the first empty slot), reading each
        slot and the hash and key of each entry it names."""
        if not index_size:
            ranges.append((entries, _ENTRY * found + _ENTRY))
            return
        slots = self.words(index, index_size)
        target = found << 3 | 1
        at = next(j for j in range(index_size) if slots[j] == target)
        run = [at]
        while len(run) < index_size:
            before = (run[-1] - 1) % index_size
            if slots[before] == _EMPTY_INDEX_SLOT:
                break
            run.append(before)
        for j in run:
            ranges.append((index + 8 * j, 8))
            ranges.append((entries + _ENTRY * (slots[j] >> 3), _HASH_AND_KEY))
        ranges.append((entries + _ENTRY * found, _ENTRY))


# Characters that end a Scheme identifier (R7RS 7.1.1 delimiters, and quote marks).
_DELIMITERS = r"""\s()\[\]";'`,|"""


def _forms_naming(forms: list[str], name: str) -> tuple[str, ...]:
    """forms, or when there are several, those in which name appears as an identifier (if any)."""
    if len(forms) < 2:
        return tuple(forms)
    pattern = re.compile(rf"(?:^|[{_DELIMITERS}]){re.escape(name)}(?=$|[{_DELIMITERS}])")
    naming = tuple(f for f in forms if pattern.search(f))
    return naming or tuple(forms)

