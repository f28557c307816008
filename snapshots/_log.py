"""The snapshot log: which versions of an image are snapshots, and what became of them.

A snapshot is a retained version with a name.  Its id is the number of the
commit it names, so ``img.at(id)`` opens it.  The log lives beside the
segments, in ``NAME.image/SNAPSHOTS``, and not in the image's heap: booting an
older snapshot rewinds the heap, and the log must still list the newer ones.

FORMAT: append-only text, one entry a line: ``<crc32 of the json, 8 hex> <json>``.

    {"op": "snapshot", "id": 12, "time": 1.7e9, "kind": "boot"|"label"|"auto",
     "label": "before cleanup" | null, "branch": "main"}
    {"op": "status", "id": 12, "status": "good"}

INVARIANTS
1. An entry is durable when take() or mark() returns: it is appended with one
   write and an fsync (the file's creation is followed by a directory fsync).
2. Only the last line can be torn (a crash during its write); a line that
   does not end in a newline or whose checksum fails is ignored when reading,
   and the next append starts on a fresh line.
3. A snapshot's status is the last status entry for its id; a boot snapshot
   with none is "unknown" while its session may still run (the image is
   locked by a writer) and "crashed" once it cannot (the lock is free, yet
   the session never marked it good).

The log names commits; it holds no page of its own.  Retention, branches by
name and vacuum build on it (the snapshots issue).
"""
from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass, field

LOG_NAME = "SNAPSHOTS"
KINDS = ("boot", "label", "auto")


@dataclass
class Snapshot:
    """One snapshot as the log describes it (see the module docstring)."""
    id: int
    time: float
    kind: str
    label: str | None
    branch: str
    status: str = "unknown"
    labels: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"id": self.id, "time": self.time, "kind": self.kind, "label": self.label,
                "status": self.status, "branch": self.branch}


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


class SnapshotLog:
    """The snapshot log of the image at path (a directory)."""

    def __init__(self, image_path: str) -> None:
        self.image_path = os.fspath(image_path)
        self.path = os.path.join(self.image_path, LOG_NAME)

    # -- reading ---------------------------------------------------------------------

    def entries(self) -> list[dict]:
        """Every whole, valid entry, in order (invariant 2)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n")[:-1]:   # the part after the last newline is torn
            entry = _parse(line)
            if entry is not None:
                out.append(entry)
        return out

    def snapshots(self, session_running: bool = False) -> list[Snapshot]:
        """The snapshots, oldest first, with their status (invariant 3).
        session_running: a writer holds the image, so its newest boot is live."""
        by_id: dict[int, Snapshot] = {}
        newest_boot = None
        for e in self.entries():
            if e["op"] == "snapshot":
                snap = by_id.get(e["id"])
                if snap is None:
                    snap = by_id[e["id"]] = Snapshot(e["id"], e["time"], e["kind"], e.get("label"),
                                                     e.get("branch", "main"))
                elif e["kind"] == "label" and snap.kind != "label":
                    snap.kind, snap.label = "label", e.get("label")
                if e.get("label"):
                    snap.labels.append(e["label"])
                if e["kind"] == "boot":
                    newest_boot = e["id"]
            elif e["op"] == "status" and e["id"] in by_id:
                by_id[e["id"]].status = e["status"]
        for snap in by_id.values():
            if snap.status != "unknown":
                continue
            if snap.kind == "label":
                snap.status = "good"   # a version the user chose, committed when labelled
            elif snap.kind == "boot" and not (session_running and snap.id == newest_boot):
                snap.status = "crashed"
        return sorted(by_id.values(), key=lambda s: s.id)

    def newest_good(self) -> Snapshot | None:
        good = [s for s in self.snapshots() if s.status == "good"]
        return good[-1] if good else None

    # -- writing -----------------------------------------------------------------------

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
        self._append({"op": "status", "id": snapshot_id, "status": status})

    def _append(self, entry: dict) -> None:
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            line = _line(entry)
            if size and not self._ends_in_newline(size):
                line = b"\n" + line   # after a torn last line, start afresh (invariant 2)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            dfd = os.open(self.image_path, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _ends_in_newline(self, size: int) -> bool:
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"
