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

INVARIANTS
1. Nothing here writes: versions are read through views (img.at), each
   closed before the function returns.
2. A journal entry is used only from the line that holds it: entries are
   read from the view of that line's tip.
3. Every commit a journal entry names is a version of its line: the
   entries the origin held name the origin (line_journal; check_line_journal
   verifies it).
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
    states between them are not on disk to tell which did it."""
    tip = version_of(img) if tip is None else tip
    require_version(img, tip)
    commits = _writer_store(img).commits()
    on_line = set(line_of(img, tip))
    forms: dict[int, list[str]] = {}
    for c in line_journal(img, tip, commits):
        if c.commit in on_line:
            forms.setdefault(c.commit, []).append(c.form)
    times = {c.number: c.time for c in commits}
    found, before = [], None
    for commit in sorted(set(forms) | {tip}):
        now = _fingerprint_at(img, commit, name)
        if now != before:
            how = "removed" if now is None else "defined" if before is None else "changed"
            found.append(Version(commit, times.get(commit), how, _forms_naming(forms.get(commit, []), name)))
        before = now
    return found


# Characters that end a Scheme identifier (R7RS 7.1.1 delimiters, and quote marks).
_DELIMITERS = r"""\s()\[\]";'`,|"""


def _forms_naming(forms: list[str], name: str) -> tuple[str, ...]:
    """forms, or when there are several, those in which name appears as an identifier (if any)."""
    if len(forms) < 2:
        return tuple(forms)
    pattern = re.compile(rf"(?:^|[{_DELIMITERS}]){re.escape(name)}(?=$|[{_DELIMITERS}])")
    naming = tuple(f for f in forms if pattern.search(f))
    return naming or tuple(forms)


def _fingerprint_at(img: image.Image, commit: int, name: str) -> bytes | None:
    with img.at(commit) as view:
        root = view.root
        return fingerprint(root[name]) if name in root else None
