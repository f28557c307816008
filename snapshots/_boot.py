"""Which version a boot without a menu starts from (`imago boot --latest`, a pipe on stdin).

THE RULE: the newest known-good version of the line the writer is on.

- The head is that version unless the last session on this line crashed: work
  committed since the newest good snapshot by clean processes (`imago eval`,
  `imago load`, a replay, the Python API) is kept, not left behind on a branch.
- If the newest snapshot on the line is a boot that crashed, the boot goes
  back to the newest good snapshot before it (the crashed line is kept as a
  branch by the caller, snapshots.rewind_keeping_line).
- Only snapshots on the current line count (a snapshot of another branch is
  never a reason to leave this one), and only those still on disk (vacuum may
  have dropped a snapshot the log still names).

INVARIANT (checked by boot_target itself): the version it returns is on the
current line and opens.
"""
from __future__ import annotations

import image
from pager import PagerError

from snapshots._log import Snapshot, SnapshotLog
from snapshots._versions import line_of


def boot_target(img: image.Image, log: SnapshotLog) -> Snapshot | None:
    """The snapshot to rewind to, or None to boot the head (see THE RULE)."""
    on_line = set(line_of(img, img.base))
    listed = [s for s in log.snapshots() if s.id in on_line]
    if not listed or max(listed, key=lambda s: s.id).status != "crashed":
        return None
    newest_crash = max(s.id for s in listed if s.status == "crashed")
    for s in sorted(listed, key=lambda s: s.id, reverse=True):
        if s.status == "good" and s.id < newest_crash and _opens(img, s.id):
            return s
    return None


def _opens(img: image.Image, commit: int) -> bool:
    """Is that version still on disk (not vacuumed, not damaged)?"""
    try:
        img.at(commit).close()
    except (KeyError, image.ImageError, PagerError):
        return False
    return True
