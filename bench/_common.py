"""Helpers the benchmarks share: write counters, the load average, number format,
the closing verdict lines."""
import json
import os
import time


def bytes_handed_to_write() -> int | None:
    """Bytes this process has passed to write()/pwrite() so far (/proc/self/io wchar).

    Per process, so other work on the machine does not leak in.  (The device
    counters in sysfs are device-wide, and /proc/self/io write_bytes counts a
    whole page-cache folio, up to megabytes, for every small write into one.)"""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def load_average() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average n/a"


def num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def heading(title: str) -> None:
    print()
    print(f"== {title} ==")


def report_verdicts(res: dict, started: float, json_path: str | None) -> None:
    """Prints the verdict lines and the total time; writes res as JSON if asked."""
    heading("Verdict")
    for v in res["verdicts"]:
        print(f"  {'met    ' if v['met'] else 'NOT MET'}  {v['target']}: {v['detail']}")
    res["elapsed_s"] = time.perf_counter() - started
    print(f"\n(total {res['elapsed_s']:.1f} s; {load_average()}: other work on the machine "
          f"skews every figure)")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=2, default=str)
