#!/usr/bin/env python3
"""Row by row comparison of two bench.py JSON results of the same grid.

Usage: python3 bench/compare_grids.py BASE.json NEW.json [NEW2.json ...] [--limit 2.0]

For each (H, T, G) present in BASE and every NEW file: bqjit's time in each,
the change of the best NEW time over BASE in percent, and both runs' share of
their own same-size copy (which the run measured beside the kernel, so that a
machine's or a driver's drift shows there too). Rows slower than --limit
percent are marked; the summary line counts them. Exit status 0 whatever the
result: this is a report, not a test.
"""
import argparse
import json
import math
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for r in data["rows"]:
        rows[(r["hidden"], r["tokens"], r["group"])] = r
    return data, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new", nargs="+")
    ap.add_argument("--limit", type=float, default=2.0, help="percent slower that marks a row")
    args = ap.parse_args()

    base_data, base = load(args.base)
    news = [load(p) for p in args.new]
    print(f"base: {args.base} ({base_data.get('device', '?')}, copy {base_data.get('copy_gbs', math.nan):.0f} GB/s)")
    for path, (data, _) in zip(args.new, news):
        print(f"new:  {path} ({data.get('device', '?')}, copy {data.get('copy_gbs', math.nan):.0f} GB/s)")
    cols = " ".join(f"{'new' + str(i + 1):>9}" for i in range(len(news)))
    print(f"{'H':>6} {'T':>5} {'G':>4} {'base us':>9} {cols} {'best %':>7} {'%copy base':>10} {'%copy new':>9}")
    slower = []
    worst = (-math.inf, None)
    for key in sorted(base):
        if not all(key in rows for _, rows in news):
            continue
        b = base[key]["bqjit_us"]
        times = [rows[key]["bqjit_us"] for _, rows in news]
        best = min(times)
        change = (best / b - 1.0) * 100.0
        best_row = news[times.index(best)][1][key]
        mark = " <" if change > args.limit else ""
        if change > args.limit:
            slower.append(key)
        if change > worst[0]:
            worst = (change, key)
        cells = " ".join(f"{t:9.2f}" for t in times)
        print(f"{key[0]:6d} {key[1]:5d} {key[2]:4d} {b:9.2f} {cells} {change:+7.1f} "
              f"{base[key]['pct_same_size_copy']:10.1f} {best_row['pct_same_size_copy']:9.1f}{mark}")
    print(f"summary: {len(slower)} row(s) more than {args.limit}% slower than base; "
          f"worst {worst[0]:+.1f}% at H x T x G = {worst[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
