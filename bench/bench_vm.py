"""The Scheme evaluator beside CPython: the same algorithm written in each.

    python bench/bench_vm.py [--quick] [--reps R]

Each case runs the same algorithm as compiled Scheme (reader -> expander ->
compiler, then ``_runtime.run``, the path the REPL takes, in the persistent
environment of a ``vm.Interpreter`` over the inbox image, as the REPL has
it) and as plain CPython in its natural idiom, interleaved (Scheme run,
Python run, Scheme run, ...) so a noisy neighbour hits both alike.  Reported: the median of the
runs for each, and the ratio Scheme / CPython.  The target is a ratio of at
most 1.5 for every case; each gets a met / NOT MET line, and the exit code is
0 whatever they say (timings are never asserted).

Cases:

1. fib(25), doubly recursive, non-tail.
2. tak 18 12 6: three-argument recursion (its outer call is a self tail call,
   which the compiler turns into a loop; CPython recurses).
3. a tail-recursive loop of 10^6 iterations summing integers; CPython's
   idiom is a while loop.
4. building a 100,000-character string one character at a time: a string
   output port (write-char, get-output-string) against io.StringIO.write.
   Repeated string-append is not used: Scheme strings are immutable Python
   strs underneath, so it would be quadratic where CPython's ``+=`` is not.
5. the same string from a list of characters: list->string of a list built
   by cons, against the same algorithm in CPython (a linked list of 2-tuples,
   walked into ''.join).  Beside it, for reference and without a verdict,
   CPython's idiom: ''.join of a list built by list.append.  That is a
   different structure (an array that allocates nothing per item, where each
   cons allocates a pair and frees it again: native/fastpath.c keeps pairs of
   immutable values out of the cyclic collector), so its ratio stays above
   1.5x and is printed, not judged.
6. a filter over a 100,000-mail inbox in an image (the inbox benchmark's
   mails, stored through the Python API): the subjects of the unread mails,
   by index, with hash-table-ref in Scheme and m["read"] in Python, over the
   same image handles.

Then boot: the time from opening an image to the REPL's first prompt
(vm.Interpreter plus the prompt session), on an image holding 1,000,000
mails (100,000 with --quick) and on an empty one.  Targets: under 0.5 s, and
no more than 20% slower than the empty image.

``--quick`` runs smaller sizes with three repetitions (about 20 s, most of it
building the images).
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import load_average

from vm._env import Environment
from vm._runtime import eval_text, resolve, run

TARGET_RATIO = 1.5

SCHEME_DEFINITIONS = """
(define (fib n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2)))))
(define (tak x y z) (if (not (< y x)) z (tak (tak (- x 1) y z) (tak (- y 1) z x) (tak (- z 1) x y))))
(define (sum-loop i acc) (if (= i 0) acc (sum-loop (- i 1) (+ acc i))))
(define (port-string n)
  (let ((out (open-output-string)))
    (let loop ((i 0))
      (when (< i n) (write-char #\\x out) (loop (+ i 1))))
    (get-output-string out)))
(define (list-string n)
  (let loop ((i 0) (acc '()))
    (if (< i n) (loop (+ i 1) (cons #\\x acc)) (list->string acc))))
(define (unread-subjects inbox)
  (let loop ((i (- (vector-length inbox) 1)) (acc '()))
    (if (< i 0)
        acc
        (let ((m (vector-ref inbox i)))
          (loop (- i 1) (if (hash-table-ref m "read") acc (cons (hash-table-ref m "subject") acc)))))))
"""


def fib(n: int) -> int:
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def tak(x: int, y: int, z: int) -> int:
    if not y < x:
        return z
    return tak(tak(x - 1, y, z), tak(y - 1, z, x), tak(z - 1, x, y))


def sum_loop(n: int) -> int:
    acc = 0
    while n != 0:
        acc += n
        n -= 1
    return acc


def port_string(n: int) -> str:
    out = io.StringIO()
    for _ in range(n):
        out.write("x")
    return out.getvalue()


def linked_list_string(n: int) -> str:
    """The Scheme case's algorithm: cons cells (2-tuples) pushed, then walked."""
    cells = None
    for _ in range(n):
        cells = ("x", cells)
    chars = []
    while cells is not None:
        char, cells = cells
        chars.append(char)
    return "".join(chars)


def list_string(n: int) -> str:
    chars = []
    for _ in range(n):
        chars.append("x")
    return "".join(chars)


def unread_subjects(inbox) -> list:
    out = []
    for i in range(len(inbox)):
        m = inbox[i]
        if not m["read"]:
            out.append(m["subject"])
    return out


def cases(quick: bool) -> list[tuple[str, str, Callable[[], object], bool]]:
    """(label, Scheme expression, the same in Python, judged against the target)."""
    fib_n, loop_n, string_n = (20, 100_000, 20_000) if quick else (25, 1_000_000, 100_000)
    tak_args = (12, 8, 4) if quick else (18, 12, 6)
    return [
        (f"fib({fib_n})", f"(fib {fib_n})", lambda: fib(fib_n), True),
        ("tak {} {} {}".format(*tak_args), "(tak {} {} {})".format(*tak_args),
         lambda: tak(*tak_args), True),
        (f"tail loop of {loop_n:,}", f"(sum-loop {loop_n} 0)", lambda: sum_loop(loop_n), True),
        (f"{string_n:,} chars via a string port", f"(port-string {string_n})",
         lambda: port_string(string_n), True),
        (f"{string_n:,} chars via a list of chars", f"(list-string {string_n})",
         lambda: linked_list_string(string_n), True),
        ("  reference: CPython's list.append", f"(list-string {string_n})",
         lambda: list_string(string_n), False),
    ]


def scheme_result_text(value: object) -> object:
    """A Python value to compare with the CPython result (strings are MStrings,
    lists are Scheme lists)."""
    from vm._types import Pair
    if isinstance(value, Pair):
        items = []
        while isinstance(value, Pair):
            items.append(value.car)
            value = value.cdr
        return items
    return getattr(value, "s", value)


def build_inbox(path: str, n: int) -> None:
    """An image whose root holds an inbox of n mails (bench_inbox's), read flags mixed."""
    import image
    from bench_inbox import make_mails
    with image.open(path) as img:
        img.root["inbox"] = []
        inbox = img.root["inbox"]
        for start in range(0, n, 10_000):
            with img.transaction():
                for k, mail in enumerate(make_mails(start, min(10_000, n - start))):
                    mail["read"] = (start + k) % 3 == 0
                    inbox.append(mail)


def time_boot(path: str) -> float:
    """Seconds from image.open to a prompt session ready to read."""
    import image
    from prompt_toolkit.input import DummyInput
    from prompt_toolkit.output import DummyOutput
    from browser.repl import Repl
    import vm
    start = time.perf_counter()
    img = image.open(path)
    interp = vm.Interpreter(img)
    # Dummy terminal ends: no "Input is not a terminal" warning when stdin is not a tty.
    Repl(interp, lambda text: None).session(input=DummyInput(), output=DummyOutput())
    elapsed = time.perf_counter() - start
    img.close()
    return elapsed


def measure(env: Environment, expression: str, python: Callable[[], object],
            reps: int) -> tuple[float, float]:
    """Medians of reps interleaved runs: (scheme seconds, python seconds).
    Both run on the evaluation thread, inside one ``run`` (so its thread
    start-up, about 0.1 ms, is not charged to the small cases)."""
    from vm._compile import compile_toplevel
    from vm._expand import expand_toplevel
    from vm._reader import read_all
    thunk = compile_toplevel(expand_toplevel(read_all(expression)[0], env.syntax), env)
    expected = python()
    got = scheme_result_text(run(thunk))
    if got != expected:
        raise SystemExit(f"benchmark mismatch for {expression}: {got!r} != {expected!r}")

    def interleaved() -> tuple[list[float], list[float]]:
        scheme_times, python_times = [], []
        for _ in range(reps):
            start = time.perf_counter()
            resolve(thunk())
            scheme_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            python()
            python_times.append(time.perf_counter() - start)
        return scheme_times, python_times

    scheme_times, python_times = run(interleaved)
    return statistics.median(scheme_times), statistics.median(python_times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 7, quick 3)")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 7)
    began = time.perf_counter()
    print(f"imago Scheme vs CPython ({'quick' if args.quick else 'full'}, {reps} runs each): "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {load_average()}")
    import tempfile
    import image
    import vm
    work = tempfile.mkdtemp(prefix="imago-bench-vm-")
    inbox_n = 20_000 if args.quick else 100_000
    build_inbox(os.path.join(work, "inbox.image"), inbox_n)
    img = image.open(os.path.join(work, "inbox.image"))
    interp = vm.Interpreter(img)
    env = interp.env
    eval_text(SCHEME_DEFINITIONS, env, "<bench>")
    inbox = img.root["inbox"]
    print(f"\n  {'case':<40}{'Scheme (ms)':>13}{'CPython (ms)':>14}{'ratio':>9}")
    verdicts = []
    all_cases = cases(args.quick) + [(f"filter a {inbox_n:,}-mail inbox", "(unread-subjects inbox)",
                                      lambda: unread_subjects(inbox), True)]
    for label, expression, python, judged in all_cases:
        scheme, cpython = measure(env, expression, python, reps)
        ratio = scheme / cpython
        print(f"  {label:<40}{scheme * 1000:>13.2f}{cpython * 1000:>14.2f}{ratio:>8.2f}x")
        if not judged:
            continue
        verdict = "met    " if ratio <= TARGET_RATIO else "NOT MET"
        verdicts.append(f"  {verdict}  {label}: Scheme within {TARGET_RATIO}x of CPython: "
                        f"{ratio:.2f}x")
    img.close()
    verdicts += boot_figures(work, args.quick, reps)
    print("\n== Verdict ==")
    print("\n".join(verdicts))
    print(f"\n(total {time.perf_counter() - began:.1f} s; {load_average()}: other work on the "
          "machine skews every figure)")
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    return 0


BOOT_ROUNDS = 31


def boot_figures(work: str, quick: bool, reps: int) -> list[str]:
    """Boot to the first prompt: a big inbox image against an empty one."""
    import image
    n = 100_000 if quick else 1_000_000
    big, empty = os.path.join(work, "big.image"), os.path.join(work, "empty.image")
    started = time.perf_counter()
    build_inbox(big, n)
    image.open(empty).close()
    print(f"\n  boot to the first prompt (built {n:,} mails in {time.perf_counter() - started:.0f} s)")
    times = {big: [], empty: []}
    for path in (big, empty):   # warm-up: the first boot imports the REPL's modules
        time_boot(path)
    # A boot takes tens of milliseconds, so more rounds cost little, and the
    # 20% verdict compares two medians that one busy moment can shift.
    for _ in range(max(BOOT_ROUNDS, reps)):
        for path in (big, empty):
            times[path].append(time_boot(path))
    t_big, t_empty = statistics.median(times[big]), statistics.median(times[empty])
    print(f"  {f'{n:,} mails':<40}{t_big * 1000:>13.1f} ms")
    print(f"  {'empty image':<40}{t_empty * 1000:>13.1f} ms")
    return [f"  {'met    ' if t_big < 0.5 else 'NOT MET'}  boot with {n:,} mails under 0.5 s: "
            f"{t_big * 1000:.0f} ms",
            f"  {'met    ' if t_big <= 1.2 * t_empty else 'NOT MET'}  boot with {n:,} mails within 20% "
            f"of an empty image: {t_big / t_empty:.2f}x"]


if __name__ == "__main__":
    sys.exit(main())
