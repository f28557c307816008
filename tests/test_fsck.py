"""fsck (snapshots/_fsck.py): every retained snapshot and the head are
verified, each on its own; damage only an old snapshot reaches fails that
snapshot alone, and the command says which and exits 1."""
from __future__ import annotations

import random

import pytest
from faults import flip_slot_holding
from test_bundles import imago

import image
import snapshots  # noqa: F401  (provides img.snapshot)
from pager import PageStore
from snapshots import SnapshotLog
from snapshots._fsck import fsck

SEED = 2026_05


@pytest.fixture
def history(tmp_path):
    """An image with three labelled snapshots, the middle one holding a blob of
    random bytes that later versions no longer hold; returns (path, ids)."""
    path = str(tmp_path / "f.image")
    rnd = random.Random(SEED)
    ids = []
    with image.open(path) as img:
        img.root["n"] = 1
        ids.append(img.snapshot("first").id)
        img.root["secret"] = img.blob(rnd.randbytes(20_000))
        img.root["n"] = 2
        ids.append(img.snapshot("with the blob").id)
        del img.root["secret"]
        img.root["n"] = 3
        img.gc()
        ids.append(img.snapshot("after").id)
    return path, ids


def _page_only_in(path: str, commit: int) -> bytes:
    """The bytes of a page that `commit` reaches and the head does not (its
    contents differ), and which no other slot of the image holds."""
    with PageStore.open(path, readonly=True) as store:
        with store.view(commit) as old, store.view(store.head) as new:
            held = set(store.page_numbers(new))
            for page_no in store.page_numbers(old):
                data = old.read(page_no)
                changed = page_no not in held or new.read(page_no) != data
                if changed and len(set(data)) > 200:    # random bytes: unique in the image
                    return data
    raise AssertionError("no page of that version is free of the head")




class TestFsck:
    """fsck(path) verifies each version and reports them all."""

    def test_a_sound_image_passes_every_version(self, history):
        """Every snapshot and the head: ok, with what was verified."""
        path, ids = history
        report = fsck(path)
        report.check()
        assert report.ok
        assert [r.id for r in report.results] == sorted(set(ids + [report.head]))
        by_id = {r.id: r for r in report.results}
        assert by_id[ids[1]].blobs == 1 and by_id[ids[2]].blobs == 0
        assert all(r.pages > 0 and r.nodes > 0 and r.objects > 0 for r in report.results)

    def test_damage_only_an_old_snapshot_reaches_fails_that_snapshot_alone(self, history):
        """A flipped byte in a page of the middle snapshot: it fails, the others pass."""
        path, ids = history
        flip_slot_holding(path, _page_only_in(path, ids[1]), 7, 0x01)
        report = fsck(path)
        report.check()
        assert not report.ok
        assert [r.id for r in report.failed] == [ids[1]]
        assert "checksum" in report.failed[0].error
        assert {r.id for r in report.results if r.ok} >= {ids[0], ids[2], report.head}
        with image.open(path, readonly=True) as img:   # the newest still opens and checks
            img.check()

    def test_a_snapshot_no_longer_on_disk_is_reported(self, history):
        """A log entry naming a commit past the head fails as 'not on disk'; the rest pass."""
        path, _ = history
        SnapshotLog(path).take(10**6, "label", "from elsewhere")
        report = fsck(path)
        assert [r.id for r in report.failed] == [10**6]
        assert "not on disk" in report.failed[0].error

    def test_a_missing_image_is_an_error(self, tmp_path):
        with pytest.raises(FileNotFoundError):
            fsck(str(tmp_path / "none.image"))


class TestFsckCommand:
    """imago fsck IMAGE: one line per version, exit status 1 if any failed."""

    def test_ok_exits_zero(self, history):
        path, ids = history
        done = imago("fsck", path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1].startswith(f"{path}: ok:")
        for i in ids:
            assert any(line.split()[0] == str(i) and " ok " in line
                       for line in done.stdout.splitlines()[:-1])

    def test_a_failed_snapshot_is_named_and_exits_one(self, history):
        path, ids = history
        flip_slot_holding(path, _page_only_in(path, ids[1]), 7, 0x01)
        done = imago("fsck", path)
        assert done.returncode == 1
        lines = done.stdout.splitlines()
        failed = [line for line in lines if "FAILED" in line and line.split()[0] == str(ids[1])]
        assert len(failed) == 1 and "checksum" in failed[0]
        assert lines[-1] == f"{path}: 1 of {len(lines) - 1} versions FAILED: {ids[1]}"
        assert "Traceback" not in done.stderr
