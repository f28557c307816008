"""The imago command: subcommands, and errors as one line with exit status 1."""
import json
import os
import subprocess
import sys

import pytest

from browser.cli import main
from pager import PageStore


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "browser", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=60)


class TestDefault:
    def test_first_use_creates_default_image(self, tmp_path):
        """A bare `imago` creates the default image in IMAGO_HOME and reports on it."""
        result = run(env={"IMAGO_HOME": str(tmp_path / "home")})
        assert result.returncode == 0, result.stderr
        assert "created a new image" in result.stdout
        assert (tmp_path / "home" / "default.image").is_dir()
        again = run(env={"IMAGO_HOME": str(tmp_path / "home")})
        assert again.returncode == 0 and "created" not in again.stdout
        assert "check      ok" in again.stdout


class TestSubcommands:
    def test_create_info_check_commits(self, tmp_path, capsys):
        """create, info, check and commits work on an image with history."""
        path = str(tmp_path / "a.image")
        assert main(["create", path, "--page-size", "1024"]) == 0
        with PageStore.open(path) as s:
            s.write(0, b"x")
            s.commit(b"hello")
        capsys.readouterr()
        assert main(["info", path]) == 0
        assert "commit 1" in capsys.readouterr().out
        assert main(["check", path]) == 0
        assert "ok: head 1" in capsys.readouterr().out
        assert main(["commits", path, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [c["number"] for c in listed] == [0, 1]
        assert listed[1]["meta"] == "hello" and listed[1]["pages"] == 1


class TestErrors:
    @pytest.mark.parametrize("make", ["missing", "file", "empty"])
    def test_bad_paths_are_one_line_errors(self, tmp_path, make):
        """A missing path, a plain file or an empty directory: one line, exit 1, no traceback."""
        path = tmp_path / "x.image"
        if make == "file":
            path.write_text("not an image")
        elif make == "empty":
            path.mkdir()
        result = run("check", str(path))
        assert result.returncode == 1
        assert result.stderr.startswith("imago: error:")
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    def test_corrupt_image_reported(self, tmp_path):
        """check on an image with a damaged page reports CorruptImage as one line."""
        path = str(tmp_path / "c.image")
        with PageStore.create(path, page_size=1024, segment_size=64 << 10) as s:
            s.write(0, b"a" * 1024)
            s.commit()
            s.write(1, b"b")
            s.commit()
            loc = s._tree.entry(0)[0]
        segno, slot = loc >> 32, loc & 0xFFFFFFFF
        with open(os.path.join(path, f"seg-{segno:06d}"), "r+b") as f:
            f.seek(slot * 1024 + 100)
            f.write(b"Z")
        result = run("check", path)
        assert result.returncode == 1
        assert "page 0" in result.stderr and "commit 1" in result.stderr
        assert "Traceback" not in result.stderr
