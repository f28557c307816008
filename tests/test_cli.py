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
        """A bare `imago` creates the default image in IMAGO_HOME and boots it (here on a pipe)."""
        home = {"IMAGO_HOME": str(tmp_path / "home")}
        result = subprocess.run([sys.executable, "-m", "browser"], input="(define seen 1)\n",
                                capture_output=True, text=True, env={**os.environ, **home}, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "created a new image" in result.stdout
        assert (tmp_path / "home" / "default.image").is_dir()
        again = subprocess.run([sys.executable, "-m", "browser"], input="seen\n", capture_output=True,
                               text=True, env={**os.environ, **home}, timeout=60)
        assert again.returncode == 0 and "created" not in again.stdout
        assert again.stdout.split() == ["1"]
        assert "booting version" in again.stderr     # a pipe boot says which version, on stderr


class TestSubcommands:
    def test_create_info_check_commits(self, tmp_path, capsys):
        """create, info, check and commits work on an image with history."""
        path = str(tmp_path / "a.image")
        assert main(["create", path, "--page-size", "1024"]) == 0
        with PageStore.open(path) as s:   # a page past the heap: the objects stay valid
            s.write(1000, b"x")
            s.commit(s.head_meta[:1024] + b"hello")   # an object memory's commit carries its meta words
        capsys.readouterr()
        assert main(["info", path]) == 0
        assert "commit 2" in capsys.readouterr().out
        assert main(["check", path]) == 0
        assert "ok: head 2" in capsys.readouterr().out
        assert main(["commits", path, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [c["number"] for c in listed] == [0, 1, 2]
        assert listed[1]["meta"] == "image: formatted"
        assert listed[2]["meta"] == "hello" and listed[2]["pages"] == 1

    def test_info_and_check_report_the_object_memory(self, tmp_path, capsys):
        """info names the root's entries and counts objects; check verifies the heap."""
        import image
        path = str(tmp_path / "o.image")
        with image.open(path) as img:
            img.root["inbox"] = [{"subject": "s"} for _ in range(10)]
        assert main(["info", path]) == 0
        out = capsys.readouterr().out
        assert "'inbox'" in out and "objects" in out
        assert main(["check", path]) == 0
        assert "2 vectors" in capsys.readouterr().out   # the inbox and the class table

    def test_info_on_a_bare_page_store(self, tmp_path, capsys):
        """A page store without an object memory is reported as such, not as an error."""
        path = str(tmp_path / "bare.image")
        PageStore.create(path).close()
        assert main(["info", path]) == 0
        assert "none (a bare page store)" in capsys.readouterr().out

    def test_create_refuses_an_existing_image(self, tmp_path):
        """create does not overwrite what is there."""
        path = str(tmp_path / "a.image")
        assert main(["create", path]) == 0
        assert main(["create", path]) == 1


class TestErrors:
    def test_a_corrupt_object_is_one_line_naming_the_address(self, tmp_path):
        """check on an image with a damaged object header: one line naming the address."""
        import image
        path = str(tmp_path / "h.image")
        with image.open(path) as img:
            img.root["v"] = [1, 2, 3]
            addr = img.root["v"].address
        with PageStore.open(path) as s:
            s.write_word(addr, s.read_word(addr) ^ (1 << 40))
            s.commit(s.head_meta)   # the meta words travel with every commit
        result = run("check", path)
        assert result.returncode == 1, result.stdout
        assert f"object at {addr:#x}" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

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
