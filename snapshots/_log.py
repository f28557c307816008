"""The snapshot log: which versions of an image are snapshots, and what became of them.

A snapshot is a retained version with a name.  Its id is the number of the
commit it names, so ``img.at(id)`` opens it.  The log lives beside the
segments, in ``NAME.image/SNAPSHOTS``, and not in the image's heap: booting an
older snapshot rewinds the heap, and the log must still list the newer ones.

FORMAT: append-only text, one entry a line: ``<crc32 of the json, 8 hex> <json>``.

    {"op": "snapshot", "id": 12, "time": 1.7e9, "kind": "boot"|"label"|"auto",
     "label": "before cleanup" | null, "branch": "main"}
    {"op": "status", "id": 12, "status": "good"|"crashed"|"unknown"|"vacuumed"}
    {"op": "branch", "name": "feature", "tip": 40, "from": 31}   (snapshots/_branches.py)

INVARIANTS
1. An entry is durable when take() or mark() returns: it is appended with one
   write and an fsync (the file's creation is followed by a directory fsync).
2. Only the last line can be torn (a crash during its write); a line that
   does not end in a newline or whose checksum fails is ignored when reading,
   and the next append starts on a fresh line.  A checksummed line whose
   fields are wrong (another tool's or version's) is skipped too.
3. A snapshot's status is the last status entry for its id written after its
   first snapshot entry; a boot snapshot with none is "unknown" while its
   session may still run (the image is locked by a writer) and "crashed" once
   it cannot (the lock is free, yet the session never marked it good).  A
   label snapshot with none is "good", an auto one "unknown".
   "vacuumed" is terminal: no later status entry changes it.
4. The summary (below) is only a hint: a listing answers exactly what folding
   every line of the log would answer, with or without it.
5. A snapshot listed with any status but "vacuumed" can be opened (a
   vacuum's doing; damage is fsck's to find).  Vacuum (_vacuum.py) marks the
   snapshots its policy drops "vacuumed" BEFORE the pager deletes a segment:
   a crash in between leaves a snapshot marked vacuumed whose pages are still
   on disk (it is only not offered any more), never one listed bootable whose
   pages are gone.  A vacuumed snapshot stays in the listing (its id, time and
   labels are history), but nothing offers it as a version to boot.

SANE FIELDS (invariant 2): an id or tip is an int in 1 .. 2**63-1 (not a
bool), a time a finite number of seconds between 0 and the end of year 9999,
a kind one of KINDS, a status one of STATUSES, a label and a branch strings.

THE SUMMARY, ``NAME.image/SNAPSHOTS.summary``, makes listing 10,000 snapshots
cost milliseconds.  Parsing a JSON line costs ~30 us on the target machine
(300 ms for 10,000), and so does any per-line Python work; the summary holds
the folded table as columns (Snapshot's fields, sorted by id, statuses
resolved as if no session ran) in one marshal payload, which loads in one C
call, plus the length of the log prefix it folds and that prefix's BLAKE2b
digest:

    imago-snapshot-summary <version> <marshal version> <prefix length> <prefix digest> <payload digest>\n
    marshal({"columns": [ids, times, kinds, labels, branches, statuses, labels lists],
             "explicit": [ids with a status entry], "newest_boot": id | None,
             "branches": [branch entries]})

A listing reads the log, and uses the summary only if its header parses, its
payload digest holds and the log's first <prefix length> bytes have the
digest it names; it then folds only the lines after that prefix (the tail).
Otherwise (no summary, a stale or damaged one, a log rewritten or damaged in
its prefix) it folds the whole log.  After a whole fold, or a tail of
TAIL_REFRESH_LINES lines or more, the listing writes a fresh summary: temp
file, fsync, rename, directory fsync; a failure to write it (a read-only
directory, a full disk) only leaves the old hint, which stays verifiable.
The summary is trusted once its digests hold because only this module
writes it, from entries that passed the checks of invariant 2 (and marshal
is never handed bytes whose payload digest failed: it is not meant for
damaged input).

Snapshot is a tuple subclass, so that 10,000 of them are made by one C loop
(tuple.__new__ over the rows) instead of 10,000 Python __init__ calls.

The log names commits; it holds no page of its own.  Branches by name
(_branches.py), retention and vacuum build on it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import marshal
import os
import threading
import time
import unicodedata
import zlib
from bisect import bisect_left
from collections import namedtuple
from functools import partial

from pager._vfs import Vfs


LOG_NAME = "SNAPSHOTS"
SUMMARY_NAME = "SNAPSHOTS.summary"
SUMMARY_MAGIC = b"imago-snapshot-summary"
SUMMARY_VERSION = 2   # 2: stricter field checks, "vacuumed" terminal (a v1 summary is refolded)
KINDS = ("boot", "label", "auto")
STATUSES = ("good", "crashed", "unknown", "vacuumed")
VACUUMED = "vacuumed"
MAX_ID = 2**63 - 1                # commit numbers are unsigned 64-bit on disk; Python ints beyond are bogus
MAX_TIME = 253402300799.0         # 9999-12-31 23:59:59 UTC: the last second time.localtime formats
# Tail lines folded at each listing before the summary is rewritten: at ~30 us
# a line, 256 lines cost ~8 ms, about what rewriting the summary costs.
TAIL_REFRESH_LINES = 256
# A snapshot's status when the log has no status entry for it (invariant 3),
# as if no session ran: a listing made while one runs corrects the newest boot.
_DEFAULT_STATUS = {"boot": "crashed", "label": "good", "auto": "unknown"}
_ID, _KIND, _LABEL, _STATUS, _LABELS = 0, 2, 3, 5, 6   # columns (Snapshot's fields)


_SnapshotFields = namedtuple("_SnapshotFields", "id time kind label branch status labels")


class Snapshot(_SnapshotFields):
    """One snapshot as the log describes it (see the module docstring): an
    immutable row, whose labels list (every label given to its version) is
    its own."""
    __slots__ = ()

    def __new__(cls, id: int, time: float, kind: str, label: str | None, branch: str,
                status: str = "unknown", labels: list[str] | None = None) -> Snapshot:
        return super().__new__(cls, id, time, kind, label, branch, status,
                               [] if labels is None else labels)

    @property
    def labels_text(self) -> str:
        """Its labels as one line of text: ", "-joined, control characters
        (newlines, terminal escapes) escaped as repr would."""
        return ", ".join(map(one_line, self.labels))

    def as_json(self) -> dict:
        return {"id": self.id, "time": self.time, "kind": self.kind, "label": self.label,
                "status": self.status, "branch": self.branch}


_make_snapshot = partial(tuple.__new__, Snapshot)   # a row -> Snapshot, with no Python frame


def one_line(text: str) -> str:
    """text with its control and line-separator characters escaped as repr
    escapes them (a newline becomes \\n, ESC \\x1b): printed, it takes one line
    and moves no terminal cursor.  Other characters are left as they are."""
    if text.isprintable():
        return text
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in _UNPRINTED else c for c in text)


_UNPRINTED = ("Cc", "Zl", "Zp")   # control characters; line and paragraph separators


def _line(entry: dict) -> bytes:
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(text.encode()):08x} {text}\n".encode()


def _parse(line: bytes) -> dict | None:
    """The entry of one whole line, or None if it is torn or damaged."""
    try:
        crc, text = line.decode().split(" ", 1)
        if int(crc, 16) != zlib.crc32(text.encode()):
            return None
        entry = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    return entry if isinstance(entry, dict) and "op" in entry else None


def _parse_lines(data: bytes) -> list[dict]:
    """The whole, valid entries of log bytes, in order (invariant 2)."""
    out = []
    for line in data.split(b"\n")[:-1]:   # the part after the last newline is torn
        entry = _parse(line)
        if entry is not None:
            out.append(entry)
    return out


def _is_id(value) -> bool:
    return type(value) is int and 0 < value <= MAX_ID


def _is_time(value) -> bool:
    return type(value) in (int, float) and 0 <= value <= MAX_TIME   # NaN fails both comparisons


def _is_snapshot_entry(e: dict) -> bool:
    """Whether a checksummed snapshot entry has sane fields (module docstring;
    a line written by another tool or version may not): such a line is skipped."""
    return (_is_id(e.get("id")) and _is_time(e.get("time"))
            and e.get("kind") in KINDS and isinstance(e.get("label"), (str, type(None)))
            and isinstance(e.get("branch", "main"), str))


def _is_status_entry(e: dict) -> bool:
    return _is_id(e.get("id")) and e.get("status") in STATUSES


def _is_branch_entry(e: dict) -> bool:
    return (isinstance(e.get("name"), str) and _is_id(e.get("tip"))
            and (e.get("from") is None or _is_id(e.get("from"))))


def _digest(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class _Table:
    """The snapshots folded from log entries, in log order (invariant 3), as
    columns (Snapshot's fields; statuses resolved as if no session ran), plus
    the ids that have a status entry, the newest boot's id and the branch
    entries.  Columns, because a summary's columns load and turn into
    Snapshots in C loops; the id -> position index is made only to fold."""

    def __init__(self, columns: list[list] | None = None, explicit: list[int] | None = None,
                 newest_boot: int | None = None, branch_entries: list[dict] | None = None) -> None:
        self.columns = columns if columns is not None else [[] for _ in Snapshot._fields]
        self.ids, self.statuses = self.columns[_ID], self.columns[_STATUS]
        self.explicit = set(explicit or ())
        self.newest_boot = newest_boot
        self.branch_entries = branch_entries if branch_entries is not None else []
        self.in_order = True   # ids ascending (a summary's are)
        self._index: dict[int, int] | None = None

    @property
    def index(self) -> dict[int, int]:
        if self._index is None:
            self._index = dict(zip(self.ids, range(len(self.ids))))
        return self._index

    def apply(self, e: dict) -> None:
        """Folds one entry in."""
        op = e["op"]
        if op == "snapshot" and _is_snapshot_entry(e):
            self._apply_snapshot(e)
        elif op == "status" and _is_status_entry(e) and e["id"] in self.index:
            self._apply_status(self.index[e["id"]], e["status"])
        elif op == "branch" and _is_branch_entry(e):
            self.branch_entries.append(e)

    def _apply_snapshot(self, e: dict) -> None:
        sid, kind, label = e["id"], e["kind"], e.get("label")
        pos = self.index.get(sid)
        if pos is None:
            pos = self.index[sid] = len(self.ids)
            self.in_order = self.in_order and (not self.ids or self.ids[-1] < sid)
            row = (sid, e["time"], kind, label, e.get("branch", "main"), _DEFAULT_STATUS[kind], [])
            for column, value in zip(self.columns, row):
                column.append(value)
        elif kind == "label" and self.columns[_KIND][pos] != "label":
            self.columns[_KIND][pos], self.columns[_LABEL][pos] = "label", label
            if sid not in self.explicit:
                self.statuses[pos] = _DEFAULT_STATUS["label"]
        if label:
            self.columns[_LABELS][pos].append(label)
        if kind == "boot":
            self.newest_boot = sid

    def _apply_status(self, pos: int, status: str) -> None:
        sid = self.ids[pos]
        if self.statuses[pos] == VACUUMED:   # terminal (invariant 3): its pages may be gone
            return
        if status == "unknown":   # says nothing: the status the kind implies
            self.explicit.discard(sid)
            self.statuses[pos] = _DEFAULT_STATUS[self.columns[_KIND][pos]]
        else:
            self.explicit.add(sid)
            self.statuses[pos] = status

    def sorted_columns(self) -> list[list]:
        if self.in_order:
            return self.columns
        order = sorted(range(len(self.ids)), key=self.ids.__getitem__)
        return [list(map(column.__getitem__, order)) for column in self.columns]

    def snapshots(self, session_running: bool) -> list[Snapshot]:
        """The snapshots, oldest first: C loops over the columns."""
        columns = self.sorted_columns()
        live = self.newest_boot
        if session_running and live is not None and live not in self.explicit:
            pos = bisect_left(columns[_ID], live)
            if columns[_KIND][pos] == "boot":   # its session may still run: not crashed (yet)
                columns = list(columns)
                columns[_STATUS] = list(columns[_STATUS])
                columns[_STATUS][pos] = "unknown"
        return list(map(_make_snapshot, zip(*columns)))

    def as_payload(self) -> dict:
        return {"columns": self.sorted_columns(), "explicit": sorted(self.explicit),
                "newest_boot": self.newest_boot, "branches": self.branch_entries}

    @classmethod
    def from_payload(cls, payload: dict) -> _Table:
        """The table of a summary's payload (ValueError if it is not one)."""
        columns, explicit = payload.get("columns"), payload.get("explicit")
        newest, branch_entries = payload.get("newest_boot"), payload.get("branches")
        if not (isinstance(columns, list) and isinstance(explicit, list)
                and isinstance(branch_entries, list) and isinstance(newest, (int, type(None)))
                and len(columns) == len(Snapshot._fields)
                and set(map(type, columns)) == {list} and len(set(map(len, columns))) == 1
                and set(map(type, columns[_ID])) <= {int}
                and set(map(type, columns[_LABELS])) <= {list}):
            raise ValueError("not a snapshot summary")
        return cls(columns, explicit, newest, branch_entries)

    def check(self) -> None:
        """Raise AssertionError unless the table keeps invariant 3's folding."""
        kinds, statuses = self.columns[_KIND], self.statuses
        assert len(set(map(len, self.columns))) == 1
        assert len(set(self.ids)) == len(self.ids), "one row per snapshot"
        assert not self.in_order or self.ids == sorted(self.ids)
        for sid, kind, status in zip(self.ids, kinds, statuses):
            assert kind in KINDS and (sid in self.explicit or status == _DEFAULT_STATUS[kind])
            assert status in STATUSES, (sid, status)
        assert self.explicit <= set(self.ids)
        assert self.newest_boot is None or self.newest_boot in self.index


class SnapshotLog:
    """The snapshot log of the image at path (a directory)."""

    def __init__(self, image_path: str) -> None:
        self.image_path = os.fspath(image_path)
        self.path = os.path.join(self.image_path, LOG_NAME)
        self.summary_path = os.path.join(self.image_path, SUMMARY_NAME)

    # -- reading ---------------------------------------------------------------------

    def entries(self) -> list[dict]:
        """Every whole, valid entry, in order (invariant 2)."""
        return _parse_lines(self._read())

    def snapshots(self, session_running: bool = False) -> list[Snapshot]:
        """The snapshots, oldest first, with their status (invariant 3).
        session_running: a writer holds the image, so its newest boot is live."""
        return self.table().snapshots(session_running)

    def branch_entries(self) -> list[dict]:
        """The branch entries, in order (the last one of a name is its tip)."""
        return self.table().branch_entries

    def newest_good(self) -> Snapshot | None:
        good = [s for s in self.snapshots() if s.status == "good"]
        return good[-1] if good else None

    def table(self) -> _Table:
        """The folded log (invariant 4): the summary and the lines after the
        prefix it covers when it holds, else every line.  Writes a fresh
        summary when this fold was costly (see the module docstring)."""
        data = self._read()
        loaded = self._load_summary(data)
        table, start = loaded if loaded is not None else (_Table(), 0)
        for entry in _parse_lines(data[start:]):
            table.apply(entry)
        whole = data.rfind(b"\n") + 1   # a summary covers whole lines only
        if whole > start and (loaded is None or data.count(b"\n", start) >= TAIL_REFRESH_LINES):
            self._write_summary(table, memoryview(data)[:whole])
        return table

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def _load_summary(self, data: bytes) -> tuple[_Table, int] | None:
        """The summary's table and the length of the log prefix it folds, or
        None when there is none or it does not hold for this log."""
        try:
            with open(self.summary_path, "rb") as f:
                header, _, payload = f.read().partition(b"\n")
            magic, version, marshalled, length, prefix_digest, payload_digest = header.decode().split(" ")
            length = int(length)
            if (magic.encode() != SUMMARY_MAGIC or int(version) != SUMMARY_VERSION
                    or int(marshalled) != marshal.version
                    or not 0 < length <= len(data) or data[length - 1] != ord("\n")
                    or _digest(payload) != payload_digest
                    or _digest(memoryview(data)[:length]) != prefix_digest):
                return None
            return _Table.from_payload(marshal.loads(payload)), length
        except (OSError, ValueError, TypeError, EOFError):
            return None   # no summary, or not one that holds: fold the whole log

    # -- writing -----------------------------------------------------------------------

    def _write_summary(self, table: _Table, prefix: memoryview) -> None:
        """Writes the summary of the log prefix that table folds (only a hint:
        a failure leaves the old one, which is checked before it is used)."""
        payload = marshal.dumps(table.as_payload())
        header = "%s %d %d %d %s %s\n" % (SUMMARY_MAGIC.decode(), SUMMARY_VERSION, marshal.version,
                                          len(prefix), _digest(prefix), _digest(payload))
        temp = f"{self.summary_path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, header.encode() + payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.summary_path)
            Vfs().fsync_dir(self.image_path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp)

    def take(self, commit: int, kind: str, label: str | None = None, branch: str = "main") -> Snapshot:
        """Records commit as a snapshot (durable when this returns)."""
        if kind not in KINDS:
            raise ValueError(f"a snapshot is {', '.join(KINDS)}, not {kind!r}")
        now = time.time()
        self._append({"op": "snapshot", "id": commit, "time": now, "kind": kind, "label": label,
                      "branch": branch})
        return Snapshot(commit, now, kind, label, branch, "good" if kind == "label" else "unknown",
                        labels=[label] if label else [])

    def mark(self, snapshot_id: int, status: str) -> None:
        """Records what became of a boot snapshot ("good")."""
        if status not in STATUSES:
            raise ValueError(f"a snapshot's status is {', '.join(STATUSES)}, not {status!r}")
        self._append({"op": "status", "id": snapshot_id, "status": status})

    def mark_vacuumed(self, snapshot_ids) -> None:
        """Records that a vacuum may delete these snapshots' pages: one write and
        one fsync for all, made before the vacuum deletes anything (invariant 5)."""
        self._append_lines(b"".join(_line({"op": "status", "id": sid, "status": VACUUMED})
                                    for sid in sorted(snapshot_ids)))

    def record_branch(self, name: str, tip: int, from_commit: int | None) -> None:
        """Records that branch name's line ends at commit tip (durable when this returns)."""
        self._append({"op": "branch", "name": name, "tip": tip, "from": from_commit})

    def _append(self, entry: dict) -> None:
        self._append_lines(_line(entry))

    def _append_lines(self, lines: bytes) -> None:
        if not lines:
            return
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and not self._ends_in_newline(size):
                lines = b"\n" + lines   # after a torn last line, start afresh (invariant 2)
            _write_all(fd, lines)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            Vfs().fsync_dir(self.image_path)

    def _ends_in_newline(self, size: int) -> bool:
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
