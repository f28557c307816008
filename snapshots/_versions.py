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
(history_reference).  history skips a sample when no commit since the last
version it opened can have changed the global, by what the pager records:
every commit lists the pages it wrote, and carries the meta words.  The
FOOTPRINT of a global in a version is the set of pages whose bytes decide
its fingerprint: the root table's header, the store words the lookup of the
name reads (the index run it probes, the entries it compares, the key), and
every object reachable from the value (footprint(); objects never move and
are never freed while reachable, so a value that moves, is replaced or grows
into new pages first rewrites a page of the footprint: an entry, a vector's
header or node).  A sample whose interval of commits (by parents, on the
line) wrote none of those pages and kept the M_ROOT word reads the same bytes,
so it has the same fingerprint and footprint.  What it does not win: the
root table's header shares the image's first heap page with the system
tables that every journaled form writes (the journal's own vector), so in a
Scheme session nearly every sample is opened.  Page granularity is too
coarse there; word granularity needs the bytes of a page as a commit wrote
it, which the pager does not offer yet (bench/README.md, bench_snapshots 4).

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
    whose footprint no commit since touched is not opened (HISTORY, FAST)."""
    return _history(img, name, tip, _FootprintScan)


def history_reference(img: image.Image, name: str, tip: int | None = None) -> list[Version]:
    """history the slow way: a view of every sampled version (the reference
    check_history compares history with)."""
    return _history(img, name, tip, _EveryVersionScan)


def check_history(img: image.Image, name: str, tip: int | None = None) -> list[Version]:
    """Invariant 4: history (skipping by footprints) answers exactly what
    history_reference (a view per sample) does.  Returns that answer."""
    fast, slow = history(img, name, tip), history_reference(img, name, tip)
    if fast != slow:
        raise AssertionError(f"history of {name!r} skipped a change: {fast} != {slow}")
    return fast


def _history(img: image.Image, name: str, tip: int | None, scan_class: Any) -> list[Version]:
    tip = version_of(img) if tip is None else tip
    require_version(img, tip)
    commits = _writer_store(img).commits()
    line = _line_records(commits, tip)
    on_line = {c.number for c in line}
    forms: dict[int, list[str]] = {}
    for c in line_journal(img, tip, commits):
        if c.commit in on_line:
            forms.setdefault(c.commit, []).append(c.form)
    times = {c.number: c.time for c in commits}
    scan = scan_class(img, name, line)
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
    """The reference: every sampled version opened and fingerprinted."""

    def __init__(self, img: image.Image, name: str, line: list) -> None:
        self.img, self.name = img, name
        self.opened = 0

    def fingerprint_at(self, commit: int) -> bytes | None:
        self.opened += 1
        return _fingerprint_at(self.img, commit, self.name)


class _FootprintScan:
    """Walks a line's samples in order, opening a version only when a commit
    since the last one opened wrote a page of that version's footprint (or
    moved the root): see HISTORY, FAST.  opened counts the versions opened."""

    def __init__(self, img: image.Image, name: str, line: list) -> None:
        self.img, self.name, self.line = img, name, line
        self.position = {c.number: i for i, c in enumerate(line)}
        self.opened = 0
        self._at = -1                        # line position of the last version read
        self._value: bytes | None = None     # its fingerprint
        self._pages: frozenset[int] | None = None   # its footprint; None: open every time
        self._root = b""                     # its M_ROOT word

    def fingerprint_at(self, commit: int) -> bytes | None:
        to = self.position[commit]
        if not self._untouched(self._at + 1, to):
            self._read(commit)
        self._at = to
        return self._value

    def _untouched(self, first: int, last: int) -> bool:
        """Whether the commits line[first..last] left the footprint as it was."""
        if self._pages is None:
            return False
        pages = self._pages
        for c in self.line[first:last + 1]:
            if _root_word(c.meta) != self._root or not pages.isdisjoint(c.pages):
                return False
        return True

    def _read(self, commit: int) -> None:
        self.opened += 1
        with self.img.at(commit) as view:
            root = view.root
            self._value = fingerprint(root[self.name]) if self.name in root else None
            self._root = _root_word(view.store.meta)
            self._pages = footprint(view, self.name)


def _root_word(record_meta: bytes) -> bytes:
    """The M_ROOT meta word a commit record carries (b"" if it carries no object memory)."""
    block = meta_block_of(record_meta)
    at = 8 * image.LAYOUT["M_ROOT"]
    return block[at:at + 8]


# -- footprints (what reading a global reads) -------------------------------------------

# Past this many objects a global's footprint is not kept: its versions are
# all opened (a walk of that size costs about what opening a version does).
FOOTPRINT_OBJECTS = 200_000
_PAGE0_BYTES = image.LAYOUT["META_WORDS"] * 8
_TAG_MASK, _TAG_PTR = 7, 0
_FMT_POINTERS, _FMT_BYTES = 0, 1
_SIZE_OVERFLOW = 0xFFFFFF
_EMPTY_INDEX_SLOT = ((-1 << 3) | 1) & (1 << 64) - 1   # FX(-1): an index slot naming no entry
_STRING_CLASS = 3                   # C_STRING in native/objmem.c


def footprint(view: image.Image, name: str) -> frozenset[int] | None:
    """The pages whose bytes decide global name's fingerprint in view (a
    read-only image of one version): those the root table's lookup of name
    reads, and every object reachable from its value.  None when the value
    reaches more than FOOTPRINT_OBJECTS objects."""
    reader = _RawHeap(view.store)
    root = int.from_bytes(_root_word(view.store.meta), "little")
    pages: set[int] = set()
    word = reader.lookup_pages(root, name, pages)
    if word is not None and not reader.reachable_pages(word, pages):
        return None
    return frozenset(pages)


class _RawHeap:
    """Objects read as bytes through a page view: headers, extents, and the
    root table's store, laid out as native/objmem.c says (WORDS, OBJECTS,
    "the table").  Used only to find pages; values are decoded by the heap."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.page_size = store.page_size

    def add_range(self, pages: set[int], addr: int, length: int) -> None:
        if length > 0:
            pages.update(range(addr // self.page_size, (addr + length - 1) // self.page_size + 1))

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

    def add_object(self, pages: set[int], addr: int) -> tuple[int, int, int, int]:
        """Adds the pages of the object at addr (header to padded end); returns object(addr)."""
        found = self.object(addr)
        fmt, _, body, size = found
        length = (size + 7) & ~7 if fmt == _FMT_BYTES else 8 * size
        self.add_range(pages, addr, body - addr + length)
        return found

    def words(self, addr: int, count: int) -> memoryview:
        return memoryview(self.store.read_bytes(addr, 8 * count)).cast("Q")

    def reachable_pages(self, word: int, pages: set[int]) -> bool:
        """Adds the pages of every object word reaches (False: more than FOOTPRINT_OBJECTS)."""
        seen: set[int] = set()
        todo = [word]
        while todo:
            w = todo.pop()
            if w == 0 or w & _TAG_MASK != _TAG_PTR or w in seen:
                continue
            if len(seen) >= FOOTPRINT_OBJECTS:
                return False
            seen.add(w)
            fmt, _, body, size = self.add_object(pages, w)
            if fmt == _FMT_POINTERS and size:
                todo.extend(self.words(body, size))
        return True

    def lookup_pages(self, table: int, name: str, pages: set[int]) -> int | None:
        """Adds the pages the lookup of name in the table at address table
        reads; returns name's value word (None when absent)."""
        _, _, tbody, _ = self.add_object(pages, table)   # count, used, store
        header = self.words(tbody, 3)   # fixnums count and used, the store's address
        used, store = header[1] >> 3, header[2]
        _, _, sbody, _ = self.object(store)
        index_size = self.words(sbody, 2)[1] >> 3   # after the capacity, a fixnum
        self.add_range(pages, store, sbody - store + 16)
        entries = sbody + 16 + 8 * index_size
        found = self._find(entries, used, name)
        if found is None:   # every probe may stop anywhere: the whole store counts
            self.add_object(pages, store)
            return None
        self._add_probe(sbody + 16, index_size, entries, found, pages)
        entry = self.words(entries + 24 * found, 3)
        if entry[1] & _TAG_MASK == _TAG_PTR:
            self.add_object(pages, entry[1])
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

    def _add_probe(self, index: int, index_size: int, entries: int, found: int, pages: set[int]) -> None:
        """The pages a probe for entry found reads.  A store without an index
        is scanned from entry 0; an indexed one is probed from the key's home
        slot, which lies in the run of filled slots that ends at the slot
        naming found (a probe stops at the first empty slot), reading each
        slot and the hash and key of each entry it names."""
        if not index_size:
            self.add_range(pages, entries, 24 * found + 24)
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
            self.add_range(pages, index + 8 * j, 8)
            self.add_range(pages, entries + 24 * (slots[j] >> 3), 16)
        self.add_range(pages, entries + 24 * found, 24)


# Characters that end a Scheme identifier (R7RS 7.1.1 delimiters, and quote marks).
_DELIMITERS = r"""\s()\[\]";'`,|"""


def _forms_naming(forms: list[str], name: str) -> tuple[str, ...]:
    """forms, or when there are several, those in which name appears as an identifier (if any)."""
    if len(forms) < 2:
        return tuple(forms)
    pattern = re.compile(rf"(?:^|[{_DELIMITERS}]){re.escape(name)}(?=$|[{_DELIMITERS}])")
    naming = tuple(f for f in forms if pattern.search(f))
    return naming or tuple(forms)

