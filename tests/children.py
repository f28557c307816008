"""Following a fuzz child: it prints one line per event ("TAG rest"); the
parent hands each line to a callback and kills the child when no line comes
for a while (the backstop should the child's own faulthandler not fire)."""
import queue
import subprocess
import threading
from collections.abc import Callable


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def follow(argv: list[str], err_path: str, stall_seconds: float,
           on_line: Callable[[str, str], None], env: dict | None = None) -> tuple[int, bool, str]:
    """Runs argv, calling on_line(tag, rest) for each line it prints; returns
    (exit status, whether it stalled and was killed, its stderr).  The stderr
    is kept in err_path for a look after a failure."""
    with open(err_path, "w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
        stalled = False
        while True:
            try:
                line = lines.get(timeout=stall_seconds)
            except queue.Empty:
                proc.kill()
                stalled = True
                while lines.get(timeout=stall_seconds) is not None:
                    pass
                break
            if line is None:
                break
            tag, _, rest = line.rstrip("\n").partition(" ")
            on_line(tag, rest)
        rc = proc.wait()
        proc.stdout.close()
        err.seek(0)
        return rc, stalled, err.read()
