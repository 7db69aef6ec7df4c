# Turns the JSON of scripts/bench_table.sh into the markdown tables of BENCHMARKS.md.
# Usage: python3 scripts/bench_table.py bench-results/ycsb
import csv
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "bench-results/ycsb"


def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


def ms(us):
    return f"{us / 1000:.2f}" if us < 10_000 else f"{us / 1000:.0f}"


redis = {}
with open(os.path.join(out, "redis.csv")) as f:
    for row in csv.DictReader(f):
        redis[row["test"]] = row

def cpu(phase):
    c = phase.get("cpu")
    return f"{c['us_per_op']:.0f}" if c else "-"


print("| setup | workload | ops/s | p50 ms | p95 ms | p99 ms | p99.9 ms | errors | CPU µs/op |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for test in ("SET", "GET"):
    r = redis.get(test)
    if r:
        print(
            f"| Redis {r.get('test')} | redis-benchmark | {float(r['rps']):,.0f} | {r['p50_latency_ms']} "
            f"| {r['p95_latency_ms']} | {r['p99_latency_ms']} | - | - | - |"
        )
rows = {}
for setup, prefix in (("1 node", "one-node"), ("3 nodes", "three-nodes")):
    for w in ("a", "b", "c"):
        j = load(f"{prefix}-{w}.json")
        rows[(setup, w)] = j
        for run, name in ((j.get("load"), "load (puts)"), (j["run"], w.upper())):
            if not run:
                continue
            print(
                f"| {setup} | {name} | {run['throughput_ops_per_sec']:,.0f} | {ms(run['p50_us'])} "
                f"| {ms(run['p95_us'])} | {ms(run['p99_us'])} | {ms(run['p999_us'])} | {run['errors']} "
                f"| {cpu(run)} |"
            )

print()
get = float(redis["GET"]["rps"]) if "GET" in redis else float("nan")
c1 = rows[("1 node", "c")]["throughput_ops_per_sec"]
a1 = rows[("1 node", "a")]["throughput_ops_per_sec"]
a3 = rows[("3 nodes", "a")]["throughput_ops_per_sec"]
l1 = rows[("1 node", "c")]["load"]["throughput_ops_per_sec"]
l3 = rows[("3 nodes", "c")]["load"]["throughput_ops_per_sec"]
print("| target | measured | ratio | goal |")
print("| --- | ---: | ---: | ---: |")
print(f"| 1 node workload C vs Redis GET | {c1:,.0f} vs {get:,.0f} ops/s | {c1 / get:.2f} | >= 1.0 |")
print(f"| 3 nodes workload A vs 1 node workload A | {a3:,.0f} vs {a1:,.0f} ops/s | {a3 / a1:.2f} | >= 0.5 |")
print(f"| 3 nodes load-phase puts vs 1 node | {l3:,.0f} vs {l1:,.0f} ops/s | {l3 / l1:.2f} | >= 0.4 |")

print()
print("| offered ops/s | % of closed-loop | achieved ops/s | p50 ms | p99 ms | p99.9 ms | max ms |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for pct in (10, 25, 50, 75, 90, 100, 110):
    name = f"curve-a-{pct}.json"
    if not os.path.exists(os.path.join(out, name)):
        continue
    j = load(name)
    run = j["run"]
    print(
        f"| {j['config']['target_ops_per_sec']:,.0f} | {pct} % | {run['throughput_ops_per_sec']:,.0f} "
        f"| {ms(run['p50_us'])} | {ms(run['p99_us'])} | {ms(run['p999_us'])} | {ms(run['max_us'])} |"
    )

def runs(prefix):
    return [load(n) for n in sorted(os.listdir(out)) if n.startswith(prefix) and n.endswith(".json")]


def half_load(label, runs, goal_ms):
    """The median p99 of the half-load runs, with every run's."""
    if not runs:
        return
    p99s = sorted(j["run"]["p99_us"] for j in runs)
    print()
    print(
        f"{label} ({runs[0]['config']['target_ops_per_sec']:,.0f} ops/s), {len(p99s)} runs of the "
        f"same 20 s: median {ms(p99s[len(p99s) // 2])} ms (runs: {', '.join(ms(p) for p in p99s)} ms); "
        f"goal <= {goal_ms} ms."
    )


half_load("p99 at half of saturation", runs("curve-a-50.json") + runs("curve-a-50-run"), 5)
half_load("3 nodes, p99 at half of workload A's saturation", runs("three-nodes-a-half-run"), 10)

kill = os.path.join(out, "three-nodes-a-kill.json")
if os.path.exists(kill):
    j = load("three-nodes-a-kill.json")
    f = j["fault"]
    print()
    print(
        f"Fault window: {f['node']} killed at {f['killed_at_s']:.1f} s, answering again at "
        f"{f['restarted_at_s']:.1f} s; {f['throughput_before_ops_per_sec']:,.0f} ops/s before, "
        f"{f['throughput_in_window_ops_per_sec']:,.0f} ops/s and {f['errors_in_window']} errors in the "
        f"window; whole run {j['run']['throughput_ops_per_sec']:,.0f} ops/s, {j['run']['errors']} errors "
        f"({', '.join(f'{k} {v}' for k, v in j['run']['errors_by_kind'].items()) or 'none'})."
    )
