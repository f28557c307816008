"""Branches: named lines of versions, and the writer moving between them.

A line of versions is a chain of commits linked by their parents (commit
numbers are global and grow across lines: pager, rewind).  A branch names
the tip of a line.

MODEL
- The current branch's name lives in the heap, ``img.system["branch"]``
  (absent: "main"), so it changes atomically with the commit that switches.
- The current branch's tip is the writer's state: ``img.base`` (on a fresh
  open, the newest commit, since every rewind here is followed at once by a
  commit of its own).
- The tips of the other branches are entries of the snapshot log (SNAPSHOTS):
  ``{"op": "branch", "name": N, "tip": C, "from": F}``.  The last entry of a
  name is its tip; an entry naming the current branch is stale (its tip is
  the head) and is ignored.
- Booting an older snapshot continues the current branch from it (like
  ``git reset --hard``) and keeps the line it leaves as the branch
  ``<branch>~<tip>`` (``keep_line``), so nothing is lost until retention
  drops it.  Whatever branch the snapshot was taken on, the writer stays on
  its current branch: switch() is the way to move to another branch.

INVARIANTS (check() verifies 1-3)
1. Names match NAME_PATTERN; "~" is reserved for kept lines ("main~57").
2. Every branch's tip is a commit on disk that holds an object memory (a
   tip is checked when it is written).
3. Exactly one branch is current, and no two branches share a name.
4. switch(): the entry recording the old branch's tip is durable before the
   commit that moves the writer.  A crash between them leaves the writer on
   the old branch at its old tip (the pager's rewind is not durable until
   the next commit), and the extra entry names the current branch, so it is
   ignored (the model above).

STATES of the writer: ON BRANCH B --switch(N)--> record B's tip, rewind to
N's tip, commit system["branch"] = N --> ON BRANCH N.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import image
from pager import PagerError

from snapshots._log import SnapshotLog

DEFAULT_BRANCH = "main"
# Letters, digits and . _ - /, starting with a letter or digit; 64 at most (a
# name is typed and printed in one column of the boot menu).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
KEPT_PATTERN = re.compile(NAME_PATTERN.pattern + r"~[0-9]+")


@dataclass(frozen=True)
class Branch:
    """A named line: its tip, the commit it was made from (None when not
    known: the first line), and whether the writer is on it."""
    name: str
    tip: int
    from_commit: int | None
    current: bool

    def as_json(self) -> dict:
        return {"name": self.name, "tip": self.tip, "from": self.from_commit, "current": self.current}


def version_of(img: image.Image) -> int:
    """The commit img's state is: a writer's base (a rewind moves it), a view's commit."""
    return getattr(img.store, "base", img.head)


def current_branch(img: image.Image) -> str:
    """The name of the branch the image's state is on."""
    system = img.system
    name = system.get("branch") if hasattr(system, "get") else None
    return name if isinstance(name, str) else DEFAULT_BRANCH


def branches(img: image.Image) -> list[Branch]:
    """Every branch, the current one first, then by name."""
    current = current_branch(img)
    found = {current: Branch(current, version_of(img), None, True)}
    for entry in SnapshotLog(img.path).branch_entries():
        name = entry["name"]
        if name == current:
            old = found[name]   # stale tip; its "from" is still worth showing
            found[name] = Branch(name, old.tip, entry.get("from"), True)
        else:
            found[name] = Branch(name, entry["tip"], entry.get("from"), False)
    others = sorted((b for b in found.values() if not b.current), key=lambda b: b.name)
    return [found[current], *others]


def branch_named(img: image.Image, name: str) -> Branch:
    """The branch called name, or a ValueError that lists the others."""
    for b in branches(img):
        if b.name == name:
            return b
    names = ", ".join(b.name for b in branches(img))
    raise ValueError(f"no branch {name!r} (the branches are: {names})")


def validate_name(name: str) -> str:
    """name, if it may name a new branch (invariant 1); else a ValueError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{name!r} is not a branch name: use letters, digits and . _ - / "
                         "(starting with a letter or digit, at most 64)")
    return name


def create_branch(img: image.Image, name: str, from_commit: int | None = None) -> Branch:
    """A new branch whose tip is from_commit (default: the current version).
    The writer does not move (switch() moves it)."""
    validate_name(name)
    if any(b.name == name for b in branches(img)):
        raise ValueError(f"a branch {name!r} already exists")
    tip = version_of(img) if from_commit is None else from_commit
    require_version(img, tip)
    SnapshotLog(img.path).record_branch(name, tip, tip)
    return Branch(name, tip, tip, False)


def require_version(img: image.Image, commit: int) -> None:
    """Raises a clear ValueError unless commit is on disk and holds an object memory."""
    if isinstance(commit, bool) or not isinstance(commit, int):
        raise ValueError(f"a version is a commit number, not {commit!r}")
    try:
        img.at(commit).close()
    except (KeyError, image.ImageError, PagerError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ValueError(f"there is no version {commit} ({reason})") from None


def switch(img: image.Image, name: str) -> Branch:
    """Moves the writer to branch name: records the current branch's tip,
    rewinds to name's tip and commits system["branch"] = name (invariant 4).
    Every handle of img goes stale (a rewind)."""
    target = branch_named(img, name)
    if target.current:
        raise ValueError(f"already on branch {name!r}")
    if img.readonly:
        raise image.ReadOnlyImage("switching branches needs the image's writer")
    here = branches(img)[0]
    SnapshotLog(img.path).record_branch(here.name, here.tip, here.from_commit)
    img.rewind(target.tip)
    with img.transaction(f"switch to branch {name}"):
        img.system["branch"] = name
        img.system["switched"] = (time.time(), here.name, here.tip)   # always a change: a commit
    return Branch(name, img.head, target.from_commit, True)


def keep_line(img: image.Image) -> str:
    """Before the writer leaves its line for an older version (booting an
    older snapshot): records the line as branch <current>~<tip>; returns that name."""
    name = f"{current_branch(img).split('~')[0]}~{version_of(img)}"
    SnapshotLog(img.path).record_branch(name, version_of(img), None)
    return name


def rewind_keeping_line(img: image.Image, commit: int) -> str:
    """Rewinds img to commit, keeping the line it leaves as a branch (keep_line);
    returns the kept branch's name.  The caller commits next (the rewind is
    durable with that commit)."""
    require_version(img, commit)
    kept = keep_line(img)
    img.rewind(commit)
    return kept


def check(img: image.Image) -> int:
    """Verifies invariants 1-3; returns the number of branches."""
    listed = branches(img)
    names = [b.name for b in listed]
    if len(set(names)) != len(names) or sum(b.current for b in listed) != 1:
        raise AssertionError(f"branches: duplicate names or not one current: {listed}")
    for b in listed:
        if not (NAME_PATTERN.fullmatch(b.name) or KEPT_PATTERN.fullmatch(b.name)):
            raise AssertionError(f"branches: {b.name!r} is not a valid name")
        require_version(img, b.tip)
    return len(listed)
