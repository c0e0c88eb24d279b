#!/usr/bin/env python3
"""bench/evals-table.py: markdown tables from bench/evals.sh's JSON lines.

    python3 bench/evals-table.py OUTDIR
    python3 bench/evals-table.py --grid OUTDIR   # recall as a policy x (budget, span) grid

Reads OUTDIR/rps.jsonl, OUTDIR/passkey.jsonl and OUTDIR/recall.jsonl (each line one
`kvscope eval ... --json` result) and prints the tables of doc/EVALS.md.
"""
import json
import os
import sys
from collections import OrderedDict, defaultdict


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def short(policy):
    """'sirllm mode=paper sinks=4 recent=0 lambda=0.9' -> 'sirllm (paper, λ 0.9)'."""
    parts = policy.split()
    name, kv = parts[0], dict(p.split("=", 1) for p in parts[1:])
    if name == "sirllm":
        return "sirllm (%s, λ %s)" % (kv.get("mode"), kv.get("lambda"))
    if name == "lminfinite":
        cap = kv.get("cap")
        return "lminfinite (global %s, cap %s)" % (kv.get("global"), "L" if cap == "0" else cap)
    if name == "h2o" and kv.get("heads") != "1":
        return "h2o (heavy %s, %s pos.)" % (kv.get("heavy"), kv.get("pos"))
    if name == "streaming":
        return "streaming (%s sinks)" % kv.get("sinks")
    if name == "h2o" and kv.get("heads") == "1":
        return "h2o (heavy %s, %s pos., per head)" % (kv.get("heavy"), kv.get("pos"))
    if name == "snapkv":
        return "snapkv (window %s, kernel %s%s)" % (kv.get("window"), kv.get("kernel"),
                                                   ", per head" if kv.get("heads") == "1" else "")
    if name == "kvzip":
        return "kvzip (chunk %s, %s)" % (kv.get("chunk"),
                                         "one set" if kv.get("heads") == "0" else "per head")
    return name


def rps_table(rows):
    groups = OrderedDict()
    for r in rows:
        key = (short(r["policy"]), r["budget"] if r["policy"] != "full" else "all")
        groups.setdefault(key, {})[r["dominant"]] = r
    doms = ["rock", "paper", "scissors"]
    print("| policy | budget | rock W/T/L % | paper W/T/L % | scissors W/T/L % | mean win % "
          "| moves held (mean % of revealed) | model moves R/P/S | P(A/B/C) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (pol, budget), by in groups.items():
        cells, wins, held, mv, pm, n = [], [], [], [0, 0, 0], [0.0, 0.0, 0.0], 0
        for d in doms:
            r = by.get(d)
            if r is None:
                cells.append("–")
                continue
            cells.append("%.1f / %.1f / %.1f" % (100 * r["win_rate"], 100 * r["tie_rate"],
                                                 100 * r["lose_rate"]))
            wins.append(100 * r["win_rate"])
            held.append(100 * r["moves_held_mean_share"])
            for i, m in enumerate(["rock", "paper", "scissors"]):
                mv[i] += r["model_moves"][m]
            for i, c in enumerate("ABC"):
                pm[i] += r.get("p_mean", {}).get(c, 0)
            n += 1
        mean = sum(wins) / len(wins) if wins else float("nan")
        hm = sum(held) / len(held) if held else float("nan")
        print("| %s | %s | %s | %.1f | %.1f | %d/%d/%d | %s |" % (
            pol, budget, " | ".join(cells), mean, hm, mv[0], mv[1], mv[2],
            "/".join("%.2f" % (x / n) for x in pm) if n else "–"))


def passkey_table(rows):
    lengths = sorted({c["length"] for r in rows for c in r["cells"]})
    print("| policy | budget | " + " | ".join("%dk acc (needle kept)" % (L // 1024)
                                             for L in lengths)
          + " | true tokens | peak KV MiB | prefill tok/s |")
    print("|---|---|" + "---|" * len(lengths) + "---|---|---|")
    for r in rows:
        by = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0, 0.0])
        peak, pf_tok, pf_ms = 0, 0.0, 0.0
        toks = []
        for c in r["cells"]:
            a = by[c["length"]]
            a[0] += c["correct"]
            a[1] += c["n"]
            a[2] += c["needle_kept"] * c["n"]
            toks.append(c["tokens_mean"])
            peak = max(peak, c["peak_kv_bytes"])
            if c["prefill_tok_s"] > 0:
                pf_tok += c["prefill_tok_s"] * c["n"]
                pf_ms += c["n"]
        cells = []
        for L in lengths:
            a = by.get(L)
            if a is None or a[1] == 0:
                cells.append("–")
            else:
                cells.append("%d/%d (%.2f)" % (a[0], a[1], a[2] / a[1]))
        budget = r["budget"] if not r["policy"].startswith("full") else "all"
        print("| %s | %s | %s | %.0f–%.0f | %.1f | %.0f |" % (
            short(r["policy"]), budget, " | ".join(cells), min(toks), max(toks),
            peak / 1048576.0, pf_tok / pf_ms if pf_ms else 0))


def recall_table(rows):
    """One row per (policy, span, budget): per turn count, right / n, then
    partial answers and facts held only in part, over every fact kind."""
    turns = sorted({c["turns"] for r in rows for c in r["cells"]})
    print("| policy | span | budget | " + " | ".join(
        "%d turns: right (partial, held part)" % t for t in turns) + " | fact held all (mean) |")
    print("|---|---|---|" + "---|" * len(turns) + "---|")
    for r in rows:
        name = r["policy"].split()[0]
        kv = dict(p.split("=", 1) for p in r["policy"].split()[1:])
        span = "–" if name == "full" else kv.get("span", "word")
        cells = {c["turns"]: c for c in r["cells"] if c["kind"] == "all"}
        cols, held, n = [], 0, 0
        for t in turns:
            c = cells.get(t)
            if c is None:
                cols.append("–")
                continue
            cols.append("%d/%d (%d, %d)" % (c["right"], c["n"], c["partial"], c["held_part"]))
            held += c["held_all"]
            n += c["n"]
        budget = "all" if name == "full" else str(r["budget"])
        print("| %s | %s | %s | %s | %s |" % (short(r["policy"]).split(" span=")[0], span, budget,
              " | ".join(cols), "%.2f" % (held / n) if n else "–"))


def recall_grid(rows):
    """One row per policy, one column per (budget, span): right / n, then the
    answers that were partial and the facts held all / in part / not at all
    when the question had been read; the full cache on its own row. A cell
    run twice shows its last run."""
    cells, order, spans, budgets = {}, [], [], []
    for r in rows:
        name = r["policy"].split()[0]
        kv = dict(p.split("=", 1) for p in r["policy"].split()[1:])
        span = "–" if name == "full" else kv.get("span", "word")
        pol = short(" ".join(p for p in r["policy"].split() if not p.startswith("span=")))
        budget = "all" if name == "full" else r["budget"]
        if pol not in order:
            order.append(pol)
        if name != "full":
            spans = spans if span in spans else spans + [span]
            budgets = budgets if budget in budgets else budgets + [budget]
        tot = [c for c in r["cells"] if c["kind"] == "all"]
        cells[(pol, budget, span)] = tot[0] if tot else None
    budgets.sort()
    cols = [(b, s) for b in budgets for s in spans]
    print("| policy | " + " | ".join("%s, span %s" % (b, s) for b, s in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for pol in order:
        out = []
        for b, s in cols:
            c = cells.get((pol, b, s)) or cells.get((pol, "all", "–"))
            if c is None:
                out.append("–")
                continue
            out.append("%d/%d%s, held %d/%d/%d" % (c["right"], c["n"],
                       " (%d partial)" % c["partial"] if c["partial"] else "",
                       c["held_all"], c["held_part"], c["held_none"]))
            if (pol, "all", "–") in cells:
                out = [out[0]] + ["″"] * (len(cols) - 1)
                break
        print("| %s | %s |" % (pol, " | ".join(out)))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--grid":
        recall_grid(load(os.path.join(sys.argv[2], "recall.jsonl")))
        return
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    rps = load(os.path.join(out, "rps.jsonl"))
    pk = load(os.path.join(out, "passkey.jsonl"))
    if rps:
        print("### Rock-Paper-Scissors (%d rounds, seed %d)\n" % (rps[0]["rounds"], rps[0]["seed"]))
        rps_table(rps)
        print()
    if pk:
        print("### Passkey retrieval (seed %d, %d sample(s) per length and depth)\n"
              % (pk[0]["seed"], pk[0]["samples"]))
        passkey_table(pk)
        print()
    rc = load(os.path.join(out, "recall.jsonl"))
    if rc:
        print("### Multi-turn fact recall (seed %d, %d sample(s) per turn count and fact kind)\n"
              % (rc[0]["seed"], rc[0]["samples"]))
        recall_table(rc)
        print()
    pkl = load(os.path.join(out, "passkey-long.jsonl"))
    if pkl:
        print("### Passkey retrieval at 32k (seed %d, %d sample(s) per depth)\n"
              % (pkl[0]["seed"], pkl[0]["samples"]))
        passkey_table(pkl)
        print()


if __name__ == "__main__":
    main()
