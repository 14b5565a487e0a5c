"""CPython's figures for the multiproc benchmark suite (../shared/BENCHMARKS.md).

Runs the same workloads with the standard library's multiprocessing on this machine and
prints one JSON object per line, in the format of the Rust suite, with "impl": "cpython".
Usage: python3 cpython_bench.py [--quick] [--only NAME[,NAME]] [--pin CPU] [--list]
"""
import json
import multiprocessing as mp
import os
import statistics
import sys
import time


def empty():
    pass


def emit(bench, params, unit, runs, pin):
    if pin is not None:
        params = dict(params, pinned_cpu=pin)
    print(json.dumps({"bench": bench, "impl": "cpython", "params": params,
                      "value": statistics.median(runs), "unit": unit, "runs": runs}), flush=True)


def spawn_join(method, quick, pin):
    ctx = mp.get_context(method)
    iters = 3 if quick else 10
    if method == "spawn":
        iters = 2 if quick else 5  # ~100 ms each here
    for _ in range(1):
        p = ctx.Process(target=empty)
        p.start()
        p.join()
    runs = []
    for _ in range(3 if quick else 7):
        t = time.perf_counter()
        for _ in range(iters):
            p = ctx.Process(target=empty)
            p.start()
            p.join()
        runs.append((time.perf_counter() - t) / iters * 1e3)
    emit("spawn_join_" + method, {"start_method": method}, "ms/process", runs, pin)


WORKLOADS = {
    "spawn_join_spawn": lambda q, p: spawn_join("spawn", q, p),
    "spawn_join_forkserver": lambda q, p: spawn_join("forkserver", q, p),
    "spawn_join_fork": lambda q, p: spawn_join("fork", q, p),
}


def main():
    args = sys.argv[1:]
    quick = "--quick" in args
    only = None
    pin = None
    if "--only" in args:
        only = args[args.index("--only") + 1].split(",")
    if "--pin" in args:
        pin = int(args[args.index("--pin") + 1])
        os.sched_setaffinity(0, {pin})
    if "--list" in args:
        print("\n".join(WORKLOADS))
        return
    for name, f in WORKLOADS.items():
        if only is None or name in only:
            f(quick, pin)


if __name__ == "__main__":
    main()
