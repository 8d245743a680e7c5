"""Markdown tables of the issue-20 evidence from result.json files only:
python scripts/issue20_tables.py RULER_DIR CHECKPOINT_DIR"""
import json
import sys
from pathlib import Path


def results(d):
    for f in sorted(Path(d).rglob("result.json")):
        r = json.loads(f.read_text())
        if r.get("status") == "ok":
            yield r


def ruler(d):
    rows = {}
    for r in results(d):
        for x in r.get("ruler", []):
            rows.setdefault((x["task"], r["ctx"]), {})["dense"] = (x["acc_dense"], x["n_prompts"])
            rows[(x["task"], r["ctx"])][f"{r['compressor']} {r['level']}"] = (x["acc_compressed"], x["acc_delta"])
    cols = sorted({c for v in rows.values() for c in v if c != "dense"})
    print("| RULER task | ctx | n | dense | " + " | ".join(cols) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(cols))
    for (t, ctx), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = [f"{v[c][0]:.2f}" if c in v else "–" for c in cols]
        print(f"| {t} | {ctx} | {v['dense'][1]} | {v['dense'][0]:.2f} | " + " | ".join(cells) + " |")


def kl(d):
    rows = {}
    for r in results(d):
        s = r["summary"]
        rows.setdefault(r["level"], {})[r["ctx"]] = (s["kl_mean"], s["kl_se"], s["top1_agree"])
    ctxs = sorted({c for v in rows.values() for c in v})
    print("| checkpoint / level | " + " | ".join(f"KL {c} (top-1)" for c in ctxs) + " |")
    print("|---|" + "---:|" * len(ctxs))
    for lvl, v in sorted(rows.items(), key=lambda kv: kv[1].get(ctxs[0], (9,))[0]):
        print(f"| {lvl} | " + " | ".join(f"{v[c][0]:.4f} ± {v[c][1]:.4f} ({v[c][2]:.3f})" if c in v else "–"
                                         for c in ctxs) + " |")


if __name__ == "__main__":
    ruler(sys.argv[1])
    print()
    kl(sys.argv[2])
