"""The bundle and verification commands of ``imago`` (browser/cli.py calls
register(sub) with its subparsers):

    imago export IMAGE [ID] OUT.imago   one zstd-compressed bundle of a version
                                        (ID: a snapshot id, i.e. a commit; default the head)
    imago import OUT.imago IMAGE        a new image from a bundle
    imago fsck IMAGE                    verify every retained snapshot and the head;
                                        exit status 1 if any fails

Errors are raised as the kinds cli.main() prints as one line (ValueError,
OSError, PagerError, image.ImageError); a damaged bundle is a ValueError.
"""
from __future__ import annotations

import argparse
import os

from snapshots import FsckReport, export, fsck, import_bundle


def register(sub: argparse._SubParsersAction) -> None:
    """Adds export, import and fsck to the imago command's subparsers."""
    p = sub.add_parser("export", help="write one version as a zstd-compressed bundle",
                       usage="imago export IMAGE [ID] OUT.imago")
    p.add_argument("image")
    p.add_argument("where", nargs="+", metavar="[ID] OUT.imago",
                   help="the snapshot id (default: the head) and the bundle to write")
    p.set_defaults(run=cmd_export)
    p = sub.add_parser("import", help="make a new image from a bundle")
    p.add_argument("bundle")
    p.add_argument("image")
    p.set_defaults(run=cmd_import)
    p = sub.add_parser("fsck", help="verify every retained snapshot, not only the newest")
    p.add_argument("image")
    p.set_defaults(run=cmd_fsck)


def _export_target(where: list[str]) -> tuple[int | None, str]:
    if len(where) == 1:
        return None, where[0]
    if len(where) != 2:
        raise ValueError("usage: imago export IMAGE [ID] OUT.imago")
    try:
        commit = int(where[0])
    except ValueError:
        raise ValueError(f"a snapshot id is a number, not {where[0]!r}") from None
    return commit, where[1]


def cmd_export(args, out) -> int:
    commit, out_path = _export_target(args.where)
    info = export(args.image, commit, out_path)
    size = os.path.getsize(out_path)
    print(f"exported commit {info.commit} of {args.image}: {info.page_count:,} pages of "
          f"{info.page_size} bytes, {size:,} bytes in {out_path}", file=out)
    return 0


def cmd_import(args, out) -> int:
    info = import_bundle(args.bundle, args.image)
    print(f"imported {args.bundle} into {args.image}: {info.page_count:,} pages "
          f"(commit {info.commit} of the exported image)", file=out)
    return 0


def cmd_fsck(args, out) -> int:
    report = fsck(args.image)
    print_report(report, out)
    return 0 if report.ok else 1


def print_report(report: FsckReport, out) -> None:
    """One line per version, newest first, then the verdict."""
    for r in reversed(report.results):
        what = r.kind + (f" {r.label}" if r.label else "")
        if r.vacuumed:
            detail = "vacuumed (a vacuum dropped it; not verified)"
        elif r.ok:
            detail = (f"ok      {r.pages:,} pages, {r.nodes:,} page-table nodes, "
                      f"{r.objects:,} objects, {r.blobs:,} blobs")
        else:
            detail = f"FAILED  {r.error}"
        print(f"{r.id:>8}  {what:<24.24}  {detail}", file=out)
    failed = report.failed
    if failed:
        print(f"{report.path}: {len(failed)} of {len(report.results)} versions FAILED: "
              f"{', '.join(str(r.id) for r in failed)}", file=out)
    else:
        dropped = f", {len(report.vacuumed)} vacuumed" if report.vacuumed else ""
        print(f"{report.path}: ok: {len(report.results) - len(report.vacuumed)} versions verified"
              f"{dropped}", file=out)
