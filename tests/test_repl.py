"""The REPL and the Scheme commands of `imago`: headless, through prompt_toolkit's
pipe input, and as subprocesses (boot with a pipe, eval, load)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import image
import vm
from browser.repl import Repl, describe, docstring_of, is_complete


@pytest.fixture
def interp(tmp_path):
    img = image.open(str(tmp_path / "r.image"))
    yield vm.Interpreter(img)
    img.close()


def drive(interp, *submissions: str) -> list[str]:
    """What the REPL prints for each submission, in order."""
    printed: list[str] = []
    repl = Repl(interp, printed.append)
    for text in submissions:
        repl.handle(text)
    return printed


class TestSubmissions:
    """Enter submits only whole forms; values print; errors roll back."""

    @pytest.mark.parametrize("text, complete", [
        ("(+ 1 2)", True), ("(define (f x)", False), ('"open string', False), ("#|", False),
        (",help", True), ("1 2 3", True), ("(car '(1 2)))", True)])
    def test_enter_submits_only_whole_forms(self, text, complete):
        """The reader's Incomplete keeps the input open; anything else is submitted."""
        assert is_complete(text) is complete

    def test_values_print_and_unspecified_prints_nothing(self, interp):
        """Each form's value is written; a definition's (unspecified) value is not."""
        assert drive(interp, "(define x 20) (+ x 1)", '"text"', "#\\a") == ["21", '"text"', "#\\a"]

    def test_an_error_is_a_condition_and_the_form_rolls_back(self, interp):
        """The error prints as one line naming the condition; the form left nothing behind."""
        out = drive(interp, "(define v (vector 1))", "(begin (define w 2) (car 1))", "w")
        assert out[0].startswith(";; error: car") and "rolled back" in out[0]
        assert out[1].startswith(";; error: unbound variable: w")
        assert "Traceback" not in "\n".join(out)

    def test_last_values_and_last_error_are_bound(self, interp):
        """*1 *2 *3 hold the last values and *e the last error."""
        out = drive(interp, "1", "2", "3", "(list *1 *2 *3)", "(car 0)", "(error-object? *e)")
        assert out[3] == "(3 2 1)" and out[-1] == "#t"

    def test_a_huge_vector_prints_its_head_and_size(self, interp, tmp_path):
        """Printing a 10-million-item image vector reads only its head."""
        interp.img.root["big"] = list(range(100))
        out = drive(interp, "big")
        assert out[0].startswith("#(0 1 2") and "more" in out[0]


class TestCommands:
    """The comma commands."""

    def test_doc_source_apropos_describe_time_expand(self, interp):
        """Each command answers from the image's stored definitions and values."""
        out = drive(interp, '(define (double x) "twice x" (* 2 x))', ",doc double", ",source double",
                    ",apropos doub", ",describe (vector 1 2)", ",time (double 4)",
                    ",expand (when #t 1)", ",nonsense")
        assert out[0] == "twice x"
        assert out[1] == '(define (double x) "twice x" (* 2 x))'
        assert "double" in out[2].split()
        assert "SVector" in out[3] or "vector" in out[3]
        assert out[4] == "8" and out[5].endswith(" ms")
        assert out[6].startswith("(if ")
        assert "unknown command" in out[7]

    def test_help_and_quit(self, interp):
        """,help lists the commands; ,quit ends the loop."""
        printed: list[str] = []
        repl = Repl(interp, printed.append)
        repl.handle(",help")
        repl.handle(",quit")
        assert ",describe" in printed[0] and repl.done

    def test_docstring_forms(self):
        """A docstring is a string first in a body of two or more forms."""
        assert docstring_of('(define (f) "d" 1)') == "d"
        assert docstring_of('(define f (lambda (x) "d" x))') == "d"
        assert docstring_of('(define (f) "only a value")') is None

    def test_describe_says_where_a_value_lives(self, interp):
        """Image vectors and tables are described with their size and address."""
        interp.img.root["inbox"] = [1, 2, 3]
        assert describe(interp.img.root["inbox"]).startswith("a vector of 3 items, in the image")


class TestPromptSession:
    """The real prompt_toolkit loop, on a pipe."""

    def test_a_session_on_pipe_input(self, interp):
        """Lines typed are read, a multi-line form waits for its close, history goes to the image."""
        printed: list[str] = []
        repl = Repl(interp, printed.append)
        with create_pipe_input() as pipe:
            pipe.send_text("(define (sq x)\r(* x x))\r(sq 9)\r,quit\r")
            repl.run(repl.session(input=pipe, output=DummyOutput()))
        assert "81" in printed
        assert interp.history()[-3:] == ["(define (sq x)\n(* x x))", "(sq 9)", ",quit"]


def imago(*args: str, stdin: str | None = None, home: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, IMAGO_HOME=home or os.environ.get("IMAGO_HOME", ""))
    return subprocess.run([sys.executable, "-m", "browser", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=env)


class TestCommandLine:
    """imago boot / eval / load, as a user runs them."""

    def test_eval_prints_each_value_and_fails_with_status_1(self, tmp_path):
        """imago eval IMAGE FORMS: values on stdout; an error on stderr with exit status 1."""
        path = str(tmp_path / "e.image")
        ok = imago("eval", path, "(define (sq x) (* x x)) (sq 12) \"s\"")
        assert ok.returncode == 0 and ok.stdout.split() == ["144", '"s"']
        bad = imago("eval", path, "(sq 2) (car 1)")
        assert bad.returncode == 1 and bad.stdout.split() == ["4"]
        assert "car" in bad.stderr and "Traceback" not in bad.stderr

    def test_load_runs_a_file_one_transaction_per_form(self, tmp_path):
        """imago load: forms before a failing one are kept; the failing one is not."""
        path, src = str(tmp_path / "l.image"), tmp_path / "lib.scm"
        src.write_text("(define a 1)\n(define b (car '()))\n(define c 3)\n")
        result = imago("load", path, str(src))
        assert result.returncode == 1 and "car" in result.stderr
        assert imago("eval", path, "a").stdout.strip() == "1"
        assert imago("eval", path, "c").returncode == 1

    def test_boot_with_a_pipe_reads_forms_from_stdin(self, tmp_path):
        """With stdin not a terminal, boot runs the forms it is given and prints each value."""
        path = str(tmp_path / "b.image")
        result = imago("boot", path, stdin="(define x 5)\n(* x x)\n")
        assert result.returncode == 0 and result.stdout.strip() == "25"

    def test_a_bare_imago_boots_the_default_image(self, tmp_path):
        """imago with no arguments makes the default image in IMAGO_HOME and boots it."""
        result = imago(stdin="(+ 1 2)\n", home=str(tmp_path / "home"))
        assert result.returncode == 0 and "3" in result.stdout.split()
        assert os.path.isdir(tmp_path / "home" / "default.image")


def test_a_killed_session_keeps_every_committed_form(tmp_path):
    """SIGKILL in the middle of a form that makes commit points: reopening finds the last
    committed value, the form's later work gone, and the heap verifies."""
    import signal
    import time
    path = str(tmp_path / "k.image")
    assert imago("eval", path, "(define counter 0) (define log '())").returncode == 0
    child = subprocess.Popen(
        [sys.executable, "-m", "browser", "eval", path,
         "(let loop ((i 1)) (set! counter i) (set! log (cons i log)) (commit) (loop (+ i 1)))"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        done = imago("eval", path, "counter")   # a reader of the same image would need a lock:
        if done.returncode != 0:                # the writer holds it, so this fails while it runs
            break
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    result = imago("eval", path, "(list counter (length log) (equal? (car log) counter))")
    assert result.returncode == 0, result.stderr
    counter, length, same = result.stdout.strip().strip("()").split()
    assert int(counter) >= 1 and int(length) == int(counter) and same == "#t"
    with image.open(path) as img:
        img.check()
