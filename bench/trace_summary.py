"""Summary of a Kineto trace of training steps (switchyard train --profile).

GPU side: busy time (the union of kernel, memcpy and memset intervals), idle gaps between them, kernel
count, the kernels that take the most time and the most launched ones.
Host side (where the GPU waits on the host): every idle gap is charged to the host operation that
launched the kernel ending it (the outermost CPU op on the launching thread, e.g. aten::add or an
autograd node); when that launch came after the gap began, the host was late. Also the time the host
spent blocked in CUDA synchronizations, and the outermost CPU ops per step by count and by time.
Where GPU time goes: kernel time per (kernel, outermost and innermost CPU op around its launch).
Usage: python3 bench/trace_summary.py TRACE.json STEPS"""
import bisect, collections, json, sys

trace, steps = json.load(open(sys.argv[1])), int(sys.argv[2])
all_events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
events = [e for e in all_events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
if not events:
    print(json.dumps({"error": "no GPU events in the trace"})); sys.exit(0)
events.sort(key=lambda e: e["ts"])
start, end = events[0]["ts"], max(e["ts"] + e["dur"] for e in events)
busy, cur_s, cur_e = 0.0, None, None
gaps = []  # (gap us, index of the event that ends it)
for i, e in enumerate(events):
    s, t = e["ts"], e["ts"] + e["dur"]
    if cur_e is None or s > cur_e:
        if cur_e is not None:
            busy += cur_e - cur_s
            gaps.append((s - cur_e, i))
        cur_s, cur_e = s, t
    else:
        cur_e = max(cur_e, t)
busy += cur_e - cur_s
window = end - start
by_name = collections.Counter()
for e in events: by_name[e["name"][:90]] += e["dur"]
top = [{"kernel": k, "ms_per_step": round(v / 1000 / steps, 3)} for k, v in by_name.most_common(12)]
count = collections.Counter(e["name"][:90] for e in events if e["cat"] == "kernel")
most = [{"kernel": k, "per_step": round(v / steps)} for k, v in count.most_common(15)]

# Host side. The outermost CPU ops of each thread, as (start, end, name) sorted by start.
cpu_ops = collections.defaultdict(list)
for e in all_events:
    if e.get("cat") == "cpu_op": cpu_ops[e["tid"]].append(e)
outer = {}
for tid, ops in cpu_ops.items():
    ops.sort(key=lambda e: (e["ts"], -e["dur"]))
    keep, last_end = [], -1.0
    for e in ops:
        if e["ts"] >= last_end:
            keep.append((e["ts"], e["ts"] + e["dur"], e["name"][:70])); last_end = e["ts"] + e["dur"]
    outer[tid] = keep
def enclosing(tid, ts):
    ops = outer.get(tid, [])
    i = bisect.bisect_right(ops, (ts, float("inf"), "")) - 1
    return ops[i][2] if i >= 0 and ops[i][0] <= ts <= ops[i][1] else "(no CPU op)"
runtime = [e for e in all_events if e.get("cat") == "cuda_runtime"]
launch_of = {e["args"]["correlation"]: e for e in runtime if "correlation" in e.get("args", {})}
idle_by_op, late_ms = collections.Counter(), 0.0
for gap, i in gaps:
    launch = launch_of.get(events[i].get("args", {}).get("correlation"))
    if launch is None: idle_by_op["(launch not traced)"] += gap; continue
    idle_by_op[enclosing(launch["tid"], launch["ts"])] += gap
    if launch["ts"] > events[i]["ts"] - gap: late_ms += gap
all_ops = {tid: [(e["ts"], e["ts"] + e["dur"], e["name"][:60]) for e in ops] for tid, ops in cpu_ops.items()}
def innermost(tid, ts):  # the latest-starting op that still spans ts (nested ops start later)
    ops = all_ops.get(tid, [])
    i = bisect.bisect_right(ops, (ts, float("inf"), "")) - 1
    for j in range(i, max(-1, i - 400), -1):
        if ops[j][1] >= ts: return ops[j][2]
    return "(no CPU op)"
gpu_by_launch, launches = collections.Counter(), collections.Counter()
for e in events:
    launch = launch_of.get(e.get("args", {}).get("correlation"))
    key = (e["name"][:60],) + ((enclosing(launch["tid"], launch["ts"]), innermost(launch["tid"], launch["ts"]))
                                if launch else ("(launch not traced)", ""))
    gpu_by_launch[key] += e["dur"]; launches[key] += 1
syncs = collections.Counter()
for e in runtime:
    if "Synchronize" in e["name"] or e["name"] in ("cudaMemcpy", "cudaStreamQuery", "cudaEventQuery"):
        syncs[e["name"]] += e["dur"]
op_count, op_time = collections.Counter(), collections.Counter()
for ops in outer.values():
    for s, t, name in ops: op_count[name] += 1; op_time[name] += t - s
per_step = lambda c, n, scale: [{"op": k, "per_step": round(v / steps / scale, 3)} for k, v in c.most_common(n)]
print(json.dumps({"steps": steps, "window_ms_per_step": round(window / 1000 / steps, 2),
                  "gpu_busy_ms_per_step": round(busy / 1000 / steps, 2),
                  "idle_share": round(1 - busy / window, 4),
                  "kernels_per_step": round(sum(e["cat"] == "kernel" for e in events) / steps), "top": top,
                  "most_launched": most,
                  "gpu_ms_by_launch": [{"kernel": k[0], "outer_op": k[1], "inner_op": k[2], "ms_per_step": round(v / 1000 / steps, 3),
                                        "per_step": round(launches[k] / steps)} for k, v in gpu_by_launch.most_common(30)],
                  "host": {"idle_ms_per_step_host_late": round(late_ms / 1000 / steps, 2),
                           "idle_ms_per_step_by_launching_op": per_step(idle_by_op, 15, 1000),
                           "sync_ms_per_step": {k: round(v / 1000 / steps, 2) for k, v in syncs.most_common()},
                           "outer_ops_per_step": sum(op_count.values()) // steps,
                           "outer_ops_by_count": per_step(op_count, 20, 1),
                           "outer_ops_by_ms": per_step(op_time, 20, 1000)}}, indent=1))
