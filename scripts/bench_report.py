#!/usr/bin/env python3
"""Turns scripts/bench.sh's raw.tsv into results.md (a markdown table) and chart.png.

    bench_report.py RAW.tsv OUTDIR [--meta TEXT]

Per workload and system: median, min-max over the runs, and speed relative to the plain
directory and to gocryptfs, from the medians (>1 means faster than the reference, for
throughputs and for times alike). KMS calls are medians per run.
"""
import argparse
import csv
import statistics
from collections import defaultdict

WORKLOADS = [
    ("seq_write", "sequential write"),
    ("seq_read", "sequential read (fresh mount)"),
    ("rand_read", "4 KiB random read"),
    ("rand_write", "4 KiB random write"),
    ("create_files", "create small files"),
    ("read_files", "cold read small files"),
    ("tar_files", "cold read small files, one reader (tar)"),
    ("delete_files", "delete small files"),
    ("untar", "unpack source tree"),
    ("rm_tree", "remove source tree"),
]
SYSTEMS = ["plain", "gocryptfs", "kmsfs", "kmsfs-kms20", "kmsfs-bucket", "kmsfs-base"]
LABELS = {
    "plain": "plain dir",
    "gocryptfs": "gocryptfs",
    "kmsfs": "kmsfs (local KMS)",
    "kmsfs-kms20": "kmsfs (KMS +20 ms)",
    "kmsfs-bucket": "kmsfs bucket key (KMS +20 ms)",
    "kmsfs-base": "kmsfs before (local KMS)",
}
HIGHER_IS_BETTER = {"MiB/s", "IOPS"}


def num(x):
    return None if x in ("-", "") else float(x)


def fmt(v):
    if v is None:
        return "-"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("out")
    ap.add_argument("--meta", default="")
    ap.add_argument("--files", type=int, default=10000, help="small files per run")
    ap.add_argument("--baseline-label", default=None, help="label of the kmsfs-base system")
    a = ap.parse_args()
    if a.baseline_label:
        LABELS["kmsfs-base"] = a.baseline_label
    vals = defaultdict(list)
    extra = defaultdict(lambda: defaultdict(list))
    units = {}
    with open(a.raw) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            key = (row["workload"], row["system"])
            vals[key].append(float(row["value"]))
            units[row["workload"]] = row["unit"]
            for col in ("gdk", "decrypt", "server_gdk", "server_decrypt", "prefetched",
                        "prefetched_used", "rss_kib", "hwm_kib"):
                v = num(row.get(col, "-"))
                if v is not None:
                    extra[key][col].append(v)
    med = {k: statistics.median(v) for k, v in vals.items()}

    def speed(w, s, ref):
        if (w, s) not in med or (w, ref) not in med:
            return None
        if units[w] in HIGHER_IS_BETTER:
            return med[(w, s)] / med[(w, ref)]
        return med[(w, ref)] / med[(w, s)]

    lines = ["# kmsfs benchmark", "", a.meta, ""]
    lines += [
        "Median of the runs, with min–max. `×plain` and `×gocryptfs` are speeds relative to",
        "the plain directory and to gocryptfs in the same run (>1 = faster). KMS calls per",
        "run, median: data keys used / keys unwrapped by the mount (its audit log), and for",
        "the HTTP KMS the GenerateDataKey / Decrypt requests the server saw (its audit log;",
        "the data-key pool may make its keys before or after the step). Keys unwrapped ahead",
        "of their open (a directory walk on a remote KMS) / of those, never used.",
        "",
        "| workload | system | median | min–max | ×plain | ×gocryptfs | KMS calls (mount) | KMS requests (server) | unwrapped ahead / unused |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w, title in WORKLOADS:
        if w not in units:
            continue
        for s in SYSTEMS:
            if (w, s) not in vals:
                continue
            v = vals[(w, s)]
            e = extra[(w, s)]
            calls = srv = ahead = "-"
            if e.get("prefetched") and e.get("prefetched_used"):
                p, u = statistics.median(e["prefetched"]), statistics.median(e["prefetched_used"])
                ahead = "%d / %d" % (p, max(p - u, 0))
            if e.get("gdk"):
                calls = "%d / %d" % (statistics.median(e["gdk"]), statistics.median(e["decrypt"]))
            if e.get("server_gdk"):
                srv = "%d / %d" % (
                    statistics.median(e["server_gdk"]),
                    statistics.median(e["server_decrypt"]),
                )
            sp, sg = speed(w, s, "plain"), speed(w, s, "gocryptfs")
            lines.append(
                "| %s | %s | %s %s | %s–%s | %s | %s | %s | %s | %s |"
                % (
                    title,
                    LABELS[s],
                    fmt(med[(w, s)]),
                    units[w],
                    fmt(min(v)),
                    fmt(max(v)),
                    "-" if sp is None else "%.2f" % sp,
                    "-" if sg is None else "%.2f" % sg,
                    calls,
                    srv,
                    ahead,
                )
            )
    conc = []
    for sys in ("kmsfs-kms20", "kmsfs-bucket"):
        for w, op in (("create_files", "server_gdk"), ("read_files", "server_decrypt"),
                      ("tar_files", "server_decrypt"), ("untar", "server_gdk")):
            e = extra[(w, sys)]
            if e.get(op) is not None and (w, sys) in med:
                calls = statistics.median(e[op]) if e[op] else 0
                secs = med[(w, sys)]
                full = med.get((w, "kmsfs"))
                conc.append(
                    "| %s | %s | %d | %.2f s | %.1f s | %.1f | %s |"
                    % (LABELS[sys], dict(WORKLOADS)[w], calls, secs, calls * 0.020,
                       calls * 0.020 / secs, "-" if full is None else "%.2fx" % (secs / full))
                )
    if conc:
        lines += ["", "The KMS 20 ms late: calls the server received, the time taken, the time the calls",
                  "would take one after another, the average number in flight, and the time relative",
                  "to kmsfs on the local KMS (medians):", "",
                  "| system | workload | KMS calls | time | calls × 20 ms | in flight | vs full speed |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"] + conc
    cost = []
    for sys in ("kmsfs-kms20", "kmsfs-bucket"):
        made = extra[("create_files", sys)].get("server_gdk")
        read = extra[("read_files", sys)].get("server_decrypt")
        if made is None or read is None:
            continue
        per = 10000 / a.files
        m = statistics.median(made) * per if made else 0
        r = statistics.median(read) * per if read else 0
        cost.append("| %s | %d | %d | %d | $%.4f |" % (LABELS[sys], m, r, m + r, (m + r) * 0.03 / 10000))
    if cost:
        lines += ["", "KMS requests per 10,000 files created and read once cold (the server's count,",
                  "median), and what they cost at AWS KMS's list price of $0.03 per 10,000 requests",
                  "(a million files: 100 times as much):", "",
                  "| system | GenerateDataKey (create) | Decrypt (cold read) | in all | cost |",
                  "| --- | ---: | ---: | ---: | ---: |"] + cost
    rss = [(s, extra[("delete_files", s)]) for s in SYSTEMS if extra[("delete_files", s)].get("rss_kib")]
    if rss:
        lines += ["", "Daemon memory after the small-file workload (create, cold read, delete):", ""]
        lines += ["| system | RSS (median, min–max) | peak RSS (VmHWM, max) |", "| --- | ---: | ---: |"]
        for s, e in rss:
            r = e["rss_kib"]
            lines.append(
                "| %s | %.1f MiB (%.1f–%.1f) | %.1f MiB |"
                % (LABELS[s], statistics.median(r) / 1024, min(r) / 1024, max(r) / 1024, max(e["hwm_kib"]) / 1024)
            )
    with open(a.out + "/results.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    chart(a.out + "/chart.png", vals, units, speed, a.meta)


def chart(path, vals, units, speed, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ws = [(w, t) for w, t in WORKLOADS if w in units and (w, "gocryptfs") in vals]
    systems = [s for s in SYSTEMS if s != "gocryptfs"]
    colors = {"plain": "#c8c8c8", "kmsfs": "#1f77b4", "kmsfs-kms20": "#8fc1ea",
              "kmsfs-bucket": "#2ca02c", "kmsfs-base": "#ff7f0e"}
    fig, ax = plt.subplots(figsize=(9, 0.8 * len(ws) + 1.8))
    h = 0.8 / len(systems)
    for i, s in enumerate(systems):
        ys, xs, lo, hi = [], [], [], []
        for j, (w, _) in enumerate(ws):
            sp = speed(w, s, "gocryptfs")
            if sp is None:
                continue
            ref = statistics.median(vals[(w, "gocryptfs")])
            rel = [(x / ref) if units[w] in HIGHER_IS_BETTER else (ref / x) for x in vals[(w, s)]]
            ys.append(len(ws) - 1 - j + (len(systems) / 2 - i - 0.5) * h)
            xs.append(sp)
            lo.append(max(sp - min(rel), 0))
            hi.append(max(max(rel) - sp, 0))
        ax.barh(ys, xs, height=h, color=colors[s], label=LABELS[s], xerr=[lo, hi], capsize=2,
                error_kw={"elinewidth": 0.8, "ecolor": "#444"})
        for y, x in zip(ys, xs):
            ax.text(x * 1.04, y, "%.2fx" % x, va="center", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: "%gx" % x))
    ax.axvline(1.0, color="black", linewidth=1)
    ax.axvline(1.5, color="#d62728", linewidth=0.8, linestyle=":")
    ax.set_yticks(range(len(ws)))
    ax.set_yticklabels([t for _, t in reversed(ws)])
    ax.set_xlabel("speed relative to gocryptfs (log scale; median, bars min–max; right of 1 = faster)")
    ax.set_title("kmsfs and the plain directory, relative to gocryptfs (= 1; dotted: 1.5)")
    ax.legend(loc="lower right", fontsize=8)
    fig.text(0.01, 0.005, meta[:170], fontsize=6, color="#555")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
