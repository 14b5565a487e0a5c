"""CPython's figures for the multiproc benchmark suite (../shared/BENCHMARKS.md).

Runs the same workloads with the standard library's multiprocessing on this machine and
prints one JSON object per line, in the format of the Rust suite, with "impl": "cpython"
and the same params, so `cargo xtask bench` pairs each result with its Rust twin.
Usage: python3 cpython_bench.py [--quick] [--only NAME[,NAME]] [--pin CPU] [--list]

Where a workload would take minutes in CPython, it runs fewer iterations than the Rust
suite (rates and per-call times do not depend on the count); pool_map_cpu's task runs
fewer rounds of the same arithmetic, since only the speedup (serial / parallel) is
compared.
"""
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from multiprocessing import sharedctypes

SPAWN = mp.get_context("spawn")
QUICK = False
PIN = None


def runs(quick_n=3, full_n=7):
    return quick_n if QUICK else full_n


def emit(bench, params, unit, values):
    if PIN is not None:
        params = dict(params, pinned_cpu=PIN)
    print(json.dumps({"bench": bench, "impl": "cpython", "params": params,
                      "value": statistics.median(values), "unit": unit, "runs": values}), flush=True)


def pinned_and_not(f):
    f(False)
    if PIN is None:
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(saved)})
        try:
            f(True)
        finally:
            os.sched_setaffinity(0, saved)


def pinned(p):
    return p or PIN is not None


# ---- processes ----------------------------------------------------------------------

def empty():
    pass


def spawn_join(method):
    ctx = mp.get_context(method)
    iters = (2 if QUICK else 5) if method == "spawn" else (3 if QUICK else 10)
    p = ctx.Process(target=empty)
    p.start()
    p.join()
    values = []
    for _ in range(runs()):
        t = time.perf_counter()
        for _ in range(iters):
            p = ctx.Process(target=empty)
            p.start()
            p.join()
        values.append((time.perf_counter() - t) / iters * 1e3)
    emit("spawn_join_" + method, {"start_method": method}, "ms/process", values)


# ---- pipes --------------------------------------------------------------------------

def echo(conn):
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass


def pipe_roundtrip():
    def one(pin):
        a, b = SPAWN.Pipe()
        p = SPAWN.Process(target=echo, args=(b,))
        p.start()
        n = 300 if QUICK else 2000
        values = []
        for _ in range(runs()):
            t = time.perf_counter()
            for _ in range(n):
                a.send(7)
                a.recv()
            values.append((time.perf_counter() - t) / n * 1e6)
        a.close()
        p.join()
        emit("pipe_roundtrip", {"start_method": "spawn", "pinned": pinned(pin)}, "us/roundtrip", values)
    pinned_and_not(one)


MIB = 1 << 20


def send_mibs(conn, count):
    buf = b"\x5a" * MIB
    for _ in range(count):
        conn.send_bytes(buf)


def pipe_bytes_throughput():
    count = 100 if QUICK else 500
    values = []
    buf = bytearray(MIB)
    for _ in range(runs()):
        a, b = SPAWN.Pipe()
        p = SPAWN.Process(target=send_mibs, args=(b, count))
        p.start()
        t = time.perf_counter()
        for _ in range(count):
            a.recv_bytes_into(buf)
        values.append(count / (time.perf_counter() - t))
        p.join()
    emit("pipe_bytes_throughput", {"start_method": "spawn", "message": "1 MiB"}, "MiB/s", values)


# ---- locks and events ---------------------------------------------------------------

def uncontended(name, prim):
    n = 200_000 if QUICK else 1_000_000
    acquire, release = prim.acquire, prim.release
    values = []
    for _ in range(runs()):
        t = time.perf_counter()
        for _ in range(n):
            acquire()
            release()
        values.append((time.perf_counter() - t) / n * 1e9)
    emit(name, {}, "ns/op", values)


def event_partner(ping, pong, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


def event_pingpong():
    def one(pin):
        ping, pong = SPAWN.Event(), SPAWN.Event()
        n = 300 if QUICK else 2000
        p = SPAWN.Process(target=event_partner, args=(ping, pong, n * runs()))
        p.start()
        values = []
        for _ in range(runs()):
            t = time.perf_counter()
            for _ in range(n):
                ping.set()
                pong.wait()
                pong.clear()
            values.append(n / (time.perf_counter() - t))
        p.join()
        emit("event_pingpong", {"start_method": "spawn", "pinned": pinned(pin)}, "roundtrips/s", values)
    pinned_and_not(one)


# ---- shared memory ------------------------------------------------------------------

def increments(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def value_increment_contended():
    n = 100_000
    values = []
    for _ in range(runs(2, 5)):
        v = SPAWN.Value("i", 0)
        t = time.perf_counter()
        p = SPAWN.Process(target=increments, args=(v, n))
        p.start()
        increments(v, n)
        p.join()
        elapsed = time.perf_counter() - t
        assert v.value == 2 * n, v.value
        values.append(2 * n / elapsed)
    emit("value_increment_contended", {"start_method": "spawn", "processes": 2}, "ops/s", values)


SUM_LEN = 10_000_000


def sum_worker(arr, start, end, conn):
    view = memoryview(arr).cast("B").cast("d")
    while conn.recv():
        conn.send(sum(view[start:end]))


def array_sum_shared():
    arr = sharedctypes.RawArray("d", SUM_LEN)
    block = [float(i) for i in range(1024)]
    for off in range(0, SUM_LEN, 1024):
        arr[off:off + 1024] = block[:min(1024, SUM_LEN - off)]
    conns, procs = [], []
    for w in range(2):
        a, b = SPAWN.Pipe()
        p = SPAWN.Process(target=sum_worker, args=(arr, SUM_LEN * w // 2, SUM_LEN * (w + 1) // 2, b))
        p.start()
        conns.append(a)
        procs.append(p)
    values = []
    for _ in range(runs(2, 3)):
        t = time.perf_counter()
        for c in conns:
            c.send(True)
        for c in conns:
            c.recv()
        values.append(time.perf_counter() - t)
    for c in conns:
        c.send(False)
    for p in procs:
        p.join()
    emit("array_sum_shared", {"start_method": "spawn", "workers": 2, "len": SUM_LEN}, "s/pass", values)


# ---- queues -------------------------------------------------------------------------

ITEMS = 200_000


def produce(q, start, n):
    for i in range(start, start + n):
        q.put(i)


def produce_kib(q, n):
    payload = b"\x07" * 1024
    for _ in range(n):
        q.put(payload)


def consume(q, n):
    for _ in range(n):
        q.get()


def queue_run(bench, make, target, n, params):
    values = []
    for _ in range(runs(2, 3)):
        q = make()
        t = time.perf_counter()
        p = SPAWN.Process(target=target, args=(q,) + ((0, n) if target is produce else (n,)))
        p.start()
        for _ in range(n):
            q.get()
        values.append(n / (time.perf_counter() - t))
        p.join()
    emit(bench, params, "msgs/s", values)


def queue_throughput_small():
    queue_run("queue_throughput_small", SPAWN.Queue, produce, ITEMS, {"start_method": "spawn", "items": ITEMS})


def queue_throughput_1kib():
    n = ITEMS // 2
    queue_run("queue_throughput_1kib", SPAWN.Queue, produce_kib, n,
              {"start_method": "spawn", "items": n, "payload": "1 KiB"})


def simplequeue_throughput_small():
    queue_run("simplequeue_throughput_small", SPAWN.SimpleQueue, produce, ITEMS,
              {"start_method": "spawn", "items": ITEMS})


def queue_mpmc():
    values = []
    half = ITEMS // 2
    for _ in range(runs(2, 3)):
        q = SPAWN.Queue()
        t = time.perf_counter()
        ps = [SPAWN.Process(target=produce, args=(q, i * half, half)) for i in range(2)]
        cs = [SPAWN.Process(target=consume, args=(q, half)) for _ in range(2)]
        for p in ps + cs:
            p.start()
        for c in cs:
            c.join()
        values.append(ITEMS / (time.perf_counter() - t))
        for p in ps:
            p.join()
    emit("queue_mpmc", {"start_method": "spawn", "producers": 2, "consumers": 2, "items": ITEMS}, "msgs/s", values)


# ---- pools --------------------------------------------------------------------------

def identity(x):
    return x


def burn(seed, rounds=20_000):
    x = (seed + 1) & 0xFFFFFFFFFFFFFFFF
    acc = 0
    for _ in range(rounds):
        x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 7
        x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
        acc = (acc + x % 1000) & 0xFFFFFFFFFFFFFFFF
    return acc


def pool_map_trivial():
    with SPAWN.Pool(2) as pool:
        pool.map(identity, range(1000))
        for n, chunksize, label in [(100_000, None, "default"), (10_000, 1, 1)]:
            values = []
            for _ in range(runs()):
                t = time.perf_counter()
                out = pool.map(identity, range(n), chunksize)
                values.append(n / (time.perf_counter() - t))
                assert len(out) == n
            emit("pool_map_trivial", {"start_method": "spawn", "processes": 2, "items": n, "chunksize": label},
                 "items/s", values)


def pool_map_cpu():
    items = 64
    with SPAWN.Pool(2) as pool:
        pool.map(burn, range(4))
        values = []
        for _ in range(runs(2, 3)):
            t = time.perf_counter()
            for i in range(items):
                burn(i)
            serial = time.perf_counter() - t
            t = time.perf_counter()
            pool.map(burn, range(items))
            values.append(serial / (time.perf_counter() - t))
    emit("pool_map_cpu", {"start_method": "spawn", "processes": 2, "items": items}, "x (serial/parallel)", values)


def pool_apply_async_latency():
    def one(pin):
        with SPAWN.Pool(2) as pool:
            pool.apply(identity, (1,))
            n = 200 if QUICK else 1000
            values = []
            for _ in range(runs()):
                t = time.perf_counter()
                for _ in range(n):
                    pool.apply_async(identity, (7,)).get()
                values.append((time.perf_counter() - t) / n * 1e6)
        emit("pool_apply_async_latency", {"start_method": "spawn", "processes": 2, "pinned": pinned(pin)},
             "us/call", values)
    pinned_and_not(one)


WORKLOADS = {
    "spawn_join_spawn": lambda: spawn_join("spawn"),
    "spawn_join_forkserver": lambda: spawn_join("forkserver"),
    "spawn_join_fork": lambda: spawn_join("fork"),
    "pipe_roundtrip": pipe_roundtrip,
    "pipe_bytes_throughput": pipe_bytes_throughput,
    "lock_uncontended": lambda: uncontended("lock_uncontended", SPAWN.Lock()),
    "rlock_uncontended": lambda: uncontended("rlock_uncontended", SPAWN.RLock()),
    "semaphore_uncontended": lambda: uncontended("semaphore_uncontended", SPAWN.Semaphore(1)),
    "event_pingpong": event_pingpong,
    "value_increment_contended": value_increment_contended,
    "array_sum_shared": array_sum_shared,
    "queue_throughput_small": queue_throughput_small,
    "queue_throughput_1kib": queue_throughput_1kib,
    "simplequeue_throughput_small": simplequeue_throughput_small,
    "queue_mpmc": queue_mpmc,
    "pool_map_trivial": pool_map_trivial,
    "pool_map_cpu": pool_map_cpu,
    "pool_apply_async_latency": pool_apply_async_latency,
}


def main():
    global QUICK, PIN
    args = sys.argv[1:]
    QUICK = "--quick" in args
    only = args[args.index("--only") + 1].split(",") if "--only" in args else None
    if "--pin" in args:
        PIN = int(args[args.index("--pin") + 1])
        os.sched_setaffinity(0, {PIN})
    if "--list" in args:
        print("\n".join(WORKLOADS))
        return
    for name, f in WORKLOADS.items():
        if only is None or name in only:
            f()


if __name__ == "__main__":
    main()
