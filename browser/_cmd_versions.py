"""The version commands of ``imago``: branches, history, diff, the changes journal, replay.

    imago branch IMAGE [NAME] [--from ID]   make a branch (tip: ID or the current
                                            version); without NAME, list the branches
    imago switch IMAGE NAME                 move the writer to branch NAME
    imago history IMAGE NAME                versions in which global NAME changed, with the form
    imago diff IMAGE ID1 ID2                globals added, removed, changed from ID1 to ID2
    imago changes IMAGE [--since ID] [--from BRANCH] [--json]
                                            the changes journal: n, commit, time, form
    imago replay IMAGE --since ID [--skip N ...] [--from BRANCH]
                                            re-run journal entries made after ID on the
                                            current version, each its own transaction

Replay reads its entries from the line that has them (snapshots.replay_source:
the branch named with --from, else the most recent other branch whose line
passes through ID and has entries after it), prints each form and its value,
and stops at the first error (the entries before it stay committed).
``--skip`` takes entry numbers and ranges (3 5-7), as `imago changes` lists them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import image


def _when(t: float | None) -> str:
    return "?" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _one_line(form: str, width: int = 100) -> str:
    flat = " ".join(form.split())
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def _reader(path: str) -> image.Image:
    import snapshots  # noqa: F401  (the snapshot layer answers img.snapshots())
    import vm  # noqa: F401  (Scheme's values read back as Scheme's)
    return image.open(_existing(path), readonly=True)


def cmd_branch(args, out) -> int:
    import snapshots
    with _reader(args.image) as img:
        if args.name is None:
            for b in snapshots.branches(img):
                mark = "*" if b.current else " "
                origin = f"  (from {b.from_commit})" if b.from_commit is not None else ""
                print(f"{mark} {b.name:<24} tip {b.tip}{origin}", file=out)
            return 0
        made = snapshots.create_branch(img, args.name, args.from_commit)
    print(f"branch {made.name} at version {made.tip} (imago switch {args.image} {made.name} "
          "moves to it)", file=out)
    return 0


def cmd_switch(args, out) -> int:
    import snapshots
    import vm  # noqa: F401
    with image.open(_existing(args.image)) as img:
        left = snapshots.current_branch(img)
        moved = snapshots.switch(img, args.name)
    print(f"on branch {moved.name} (version {moved.tip}); branch {left} is kept", file=out)
    return 0


def cmd_history(args, out) -> int:
    import snapshots
    with _reader(args.image) as img:
        versions = snapshots.history(img, args.name)
    if not versions:
        print(f";; no version of this line has a global {args.name}", file=out)
    for v in versions:
        form = _one_line(v.forms[-1]) if v.forms else "(not a journaled form: the Python API)"
        print(f"{v.commit:>8}  {_when(v.time)}  {v.how:<7}  {form}", file=out)
    return 0


def cmd_diff(args, out) -> int:
    import snapshots
    with _reader(args.image) as img:
        d = snapshots.diff(img, args.older, args.newer)
    for sign, names in (("+", d.added), ("-", d.removed), ("~", d.changed)):
        for name in names:
            print(f"{sign} {name}", file=out)
    if not (d.added or d.removed or d.changed):
        print(f";; no global differs between {args.older} and {args.newer}", file=out)
    return 0


def cmd_changes(args, out) -> int:
    import snapshots
    with _reader(args.image) as img:
        entries = snapshots.changes(img, args.since, args.from_branch)
    if args.json:
        json.dump([c.as_json() for c in entries], out)
        print(file=out)
        return 0
    for c in entries:
        print(f"{c.n:>5}  {c.commit:>8}  {_when(c.time)}  {_one_line(c.form)}", file=out)
    return 0


def cmd_replay(args, out) -> int:
    import snapshots
    import vm
    from vm._reader import read_all
    with image.open(_existing(args.image)) as img:
        source, entries = snapshots.replay_source(img, args.since, args.from_branch)
        skip = set(args.skip or ())
        unknown = sorted(skip - {c.n for c in entries})
        if unknown:
            raise ValueError(f"no journal entry {', '.join(map(str, unknown))} after version "
                             f"{args.since} on branch {source.name} (imago changes {args.image} "
                             f"--since {args.since} --from {source.name} lists them)")
        print(f";; replaying {len(entries) - len(skip)} of {len(entries)} forms from branch "
              f"{source.name}", file=out)
        interp = vm.Interpreter(img)
        for change in entries:
            if change.n in skip:
                print(f";; skipped {change.n}: {_one_line(change.form)}", file=out)
                continue
            print(f";; {change.n}: {_one_line(change.form)}", file=out)
            try:
                values = [interp.run_form(datum) for datum in read_all(change.form, "<journal>")]
            except vm.SchemeFailure as exc:
                print(f"imago: error: replay stopped at entry {change.n}: {exc} (that form was "
                      "rolled back; the forms before it are kept)", file=sys.stderr)
                return 1
            _print_values(values, out)
    return 0


def _print_values(values: list, out) -> None:
    from vm._printer import pretty
    for value in values:
        if value is not None:
            print(pretty(value, depth=8, length=50), file=out)


def _existing(path: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no image at {path}")
    return path


def entry_numbers(text: str) -> list[int]:
    """An argparse type: "3" or "5-7" -> the entry numbers it names."""
    first, dash, last = text.partition("-")
    try:
        low, high = int(first), int(last) if dash else int(first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an entry number or a range N-M") from None
    if low < 1 or high < low:
        raise argparse.ArgumentTypeError(f"{text!r}: entry numbers start at 1, a range N-M has N <= M")
    return list(range(low, high + 1))


class _Extend(argparse.Action):
    """--skip 3 5-7 --skip 9: every number named, flattened."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        kept = list(getattr(namespace, self.dest) or [])
        for numbers in values:
            kept.extend(numbers)
        setattr(namespace, self.dest, kept)


def register(sub: Any) -> None:
    """Adds the version commands to the `imago` subparsers."""
    p = sub.add_parser("branch", help="make a branch (or, without NAME, list them)")
    p.add_argument("image")
    p.add_argument("name", nargs="?")
    p.add_argument("--from", dest="from_commit", type=int, metavar="ID", help="its tip (default: now)")
    p.set_defaults(run=cmd_branch)
    p = sub.add_parser("switch", help="move the writer to another branch")
    p.add_argument("image")
    p.add_argument("name")
    p.set_defaults(run=cmd_switch)
    p = sub.add_parser("history", help="the versions in which a global changed")
    p.add_argument("image")
    p.add_argument("name")
    p.set_defaults(run=cmd_history)
    p = sub.add_parser("diff", help="globals added, removed and changed between two versions")
    p.add_argument("image")
    p.add_argument("older", type=int, metavar="ID1")
    p.add_argument("newer", type=int, metavar="ID2")
    p.set_defaults(run=cmd_diff)
    p = sub.add_parser("changes", help="the changes journal")
    p.add_argument("image")
    p.add_argument("--since", type=int, metavar="ID")
    p.add_argument("--from", dest="from_branch", metavar="BRANCH", help="that branch's line")
    p.add_argument("--json", action="store_true", help="a JSON array (n, commit, time, form)")
    p.set_defaults(run=cmd_changes)
    p = sub.add_parser("replay", help="re-run journal entries made after a version")
    p.add_argument("image")
    p.add_argument("--since", type=int, metavar="ID", required=True)
    p.add_argument("--skip", type=entry_numbers, nargs="+", action=_Extend, default=[],
                   metavar="N", help="entry numbers (or ranges N-M) not to replay")
    p.add_argument("--from", dest="from_branch", metavar="BRANCH", help="read that branch's line")
    p.set_defaults(run=cmd_replay)
