"""``imago vacuum IMAGE [--keep POLICY] [--dry-run]``: reclaim the space of
versions no snapshot retains, and show what each snapshot holds back.

The lead's cli.py calls register(sub).  Errors reach the user through cli.main
as one line (``imago: error: ...``); a policy that does not parse is a
ValueError naming the bad item.  The image must not be open for writing
elsewhere (ImageLocked: one line too).
"""
from __future__ import annotations

import time

from browser.cli import _human


def register(sub) -> None:
    """Add the vacuum command to an argparse subparsers object."""
    p = sub.add_parser("vacuum", help="reclaim the space of versions no snapshot retains")
    p.add_argument("image")
    p.add_argument("--keep", default=None, metavar="POLICY",
                   help="what to keep besides labels, branch tips and the head, e.g. "
                        "boots=10,daily=7,weekly=4 (the default), or all")
    p.add_argument("--dry-run", action="store_true", help="report, change nothing")
    p.set_defaults(run=cmd_vacuum)


def cmd_vacuum(args, out) -> int:
    import os

    from snapshots._log import SnapshotLog
    from snapshots._retention import parse_policy
    from snapshots._vacuum import vacuum_image
    policy = parse_policy(args.keep)
    if not os.path.isdir(args.image):
        raise FileNotFoundError(f"no image at {args.image}")
    report, held = vacuum_image(args.image, policy, dry_run=args.dry_run)
    verb = "would remove" if report.dry_run else "removed"
    print(f"policy     {policy.describe()}; {len(report.retained)} versions retained", file=out)
    print(f"segments   {verb} {len(report.removed)}"
          + (f" ({', '.join(map(str, report.removed))})" if report.removed else ""), file=out)
    if report.busy:
        print(f"           kept {len(report.busy)} a reader opened meanwhile", file=out)
    if report.refusal_note():
        print(f"           {report.refusal_note()}", file=out)
    print(f"copied     {_human(report.copied_bytes)} of live pages "
          f"in {report.seconds:.2f} s", file=out)
    print(f"on disk    {_human(report.bytes_before)} before, {_human(report.bytes_after)} after",
          file=out)
    if report.spare_bytes:
        print(f"           {_human(report.spare_bytes)} of it kept as the spare segment", file=out)
    _print_held(SnapshotLog(args.image), held, out)
    return 0


def _print_held(log, held: dict[int, int], out) -> None:
    by_id = {s.id: s for s in log.snapshots()}
    print("held back  (bytes only that version keeps on disk)", file=out)
    for commit in sorted(held, reverse=True):
        snap = by_id.get(commit)
        if snap is None:
            what = "head"
        else:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(snap.time))
            what = f"{when}  {snap.kind}" + (f"  {', '.join(snap.labels)}" if snap.labels else "")
        print(f"  {commit:>8}  {_human(held[commit]):>10}  {what}", file=out)

