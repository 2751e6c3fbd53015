#!/usr/bin/env python3
"""Small-file workloads for scripts/bench.sh: create or read N files of SIZE bytes.

    bench_files.py create DIR N SIZE     # N files in DIR (made), then sync
    bench_files.py read DIR THREADS      # read every file under DIR, THREADS at a time

Prints the elapsed seconds. Standard library only; the per-file cost of Python
(about 10 us) is small next to a FUSE round trip.
"""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def create(d, n, size):
    os.makedirs(d, exist_ok=True)
    data = os.urandom(size)
    start = time.monotonic()
    for i in range(n):
        fd = os.open(os.path.join(d, "f%05d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    os.sync()
    return time.monotonic() - start


def read_one(path):
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def read(d, threads):
    start = time.monotonic()
    paths = [e.path for e in os.scandir(d) if e.is_file()]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(read_one, paths, chunksize=64):
            pass
    return time.monotonic() - start


def main():
    cmd = sys.argv[1]
    if cmd == "create":
        secs = create(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "read":
        secs = read(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: bench_files.py create DIR N SIZE | read DIR THREADS")
    print("%.6f" % secs)


if __name__ == "__main__":
    main()
