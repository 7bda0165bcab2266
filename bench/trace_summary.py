"""Summary of a Kineto trace of training steps (switchyard train --profile): GPU busy time (the union
of kernel and memcpy intervals), idle gaps between them, kernel count, and the kernels that take the
most time. Usage: python3 bench/trace_summary.py TRACE.json STEPS"""
import collections, json, sys

trace, steps = json.load(open(sys.argv[1])), int(sys.argv[2])
events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
if not events:
    print(json.dumps({"error": "no GPU events in the trace"})); sys.exit(0)
events.sort(key=lambda e: e["ts"])
start, end = events[0]["ts"], max(e["ts"] + e["dur"] for e in events)
busy, cur_s, cur_e = 0.0, None, None
for e in events:
    s, t = e["ts"], e["ts"] + e["dur"]
    if cur_e is None or s > cur_e:
        if cur_e is not None: busy += cur_e - cur_s
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
print(json.dumps({"steps": steps, "window_ms_per_step": round(window / 1000 / steps, 2),
                  "gpu_busy_ms_per_step": round(busy / 1000 / steps, 2),
                  "idle_share": round(1 - busy / window, 4),
                  "kernels_per_step": round(sum(e["cat"] == "kernel" for e in events) / steps), "top": top,
                  "most_launched": most}))
