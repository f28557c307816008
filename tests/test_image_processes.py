"""Killed processes: SIGKILL at random moments during autocommit appends,
bulk transactions and collections, then reopen: every committed append is
there, in order, nothing uncommitted is, and check() passes."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child appends and reports each commit after it returned; the parent
# kills it at a random moment.  What the child printed is the floor of what
# must survive; at most one more commit (made, not yet reported) may.
CHILD = textwrap.dedent("""
    import sys
    import image
    mode, path, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    img = image.open(path)
    if "inbox" not in img.root:
        img.root["inbox"] = []
    inbox = img.root["inbox"]
    n = start
    while True:
        if mode == "autocommit":
            inbox.append({"n": n, "subject": "subject %d" % n, "body": "b" * (n % 1500)})
            n += 1
        else:
            with img.transaction():
                for _ in range(250):
                    inbox.append({"n": n, "body": "x" * 700})
                    n += 1
            if mode == "gc" and (n // 250) % 3 == 0:
                img.root["junk"] = [[i] * 20 for i in range(200)]
                del img.root["junk"]
                img.gc()
        print(n, flush=True)
""")


def run_until_killed(path, mode, start, delay):
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(path), str(start)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                             text=True)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err
    reported = [int(line) for line in out.split()]
    return reported[-1] if reported else None


def survivors(path):
    img = image.open(path)
    try:
        img.check()
        inbox = img.root["inbox"] if "inbox" in img.root else []
        return [m["n"] for m in inbox]
    finally:
        img.close()


@pytest.mark.parametrize("mode,step", [("autocommit", 1), ("bulk", 250), ("gc", 250)])
def test_sigkill_keeps_exactly_the_committed_appends(tmp_path, mode, step):
    """After each kill the image holds 0..k in order, k at least what the child reported."""
    rng = random.Random(f"sigkill-{mode}")
    path = tmp_path / "k.image"
    count = 0
    for _ in range(5):
        reported = run_until_killed(path, mode, count, rng.uniform(0.4, 1.6))
        got = survivors(path)
        assert got == list(range(len(got))), "appends lost or out of order"
        floor = reported if reported is not None else count
        assert floor <= len(got) <= floor + step, (floor, len(got))
        assert len(got) % step == 0
        count = len(got)
    assert count > 0, "the child never committed: the test proved nothing"
