"""Issue 20: the dense scores of a task=lm_eval job equal lm-eval's own command on the same model folder, tasks
and length, sample for sample (scores, generated text, log-likelihoods).

    python scripts/issue20_crosscheck.py OUT [--model FOLDER] [--ctx 1024] [--limit 2]

FOLDER defaults to the embedded SmolLM2 as an HF folder (python -m lcc.models). Tasks: RULER niah_single_1
(generated haystack, greedy generation) and lcc_pydoc_cloze (offline multiple choice). dtype float32.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default=None)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--limit", type=int, default=2)
    a = ap.parse_args()
    from lcc.models import prepare_embedded
    from lcc.tasks.lm_eval import make_pydoc_task

    out = Path(a.out)
    model = a.model or str(prepare_embedded())
    inc = make_pydoc_task(out / "inc", n_docs=max(a.limit, 10))
    tasks = "niah_single_1,lcc_pydoc_cloze"
    lcc = [sys.executable, "-m", "lcc.sweep", "model=hf", f"model.name_or_path={model}", "task=lm_eval",
           f"task.tasks=[{tasks}]", f"task.include_path={inc}", f"task.limit={a.limit}", f"ctx.tokens={a.ctx}",
           "compressor=none", "cache.enabled=false", "logger=none", "dtype=float32", f"output_dir={out / 'lcc'}"]
    cli = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={model},dtype=float32,max_length={a.ctx}", "--device", "cpu", "--batch_size", "1",
           "--tasks", tasks, "--include_path", str(inc), "--limit", str(a.limit), "--metadata",
           json.dumps({"max_seq_lengths": [a.ctx]}), "--seed", "0,0,0,0", "--log_samples",
           "--output_path", str(out / "cli")]
    for cmd in (lcc, cli):
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    ours = pd.read_parquet(out / "lcc" / "samples.parquet")
    n_same = n = 0
    for task, metric in [("niah_single_1", str(a.ctx)), ("lcc_pydoc_cloze", "acc")]:
        (f,) = sorted((out / "cli").rglob(f"samples_{task}_*.jsonl"))
        theirs = {s["doc_id"]: s for s in map(json.loads, f.read_text().splitlines())}
        mine = ours[ours.lm_task == task].set_index("doc_id")
        for i, s in sorted(theirs.items()):
            o = json.loads(mine.loc[i, "output_dense"])
            same_out = (o == s["filtered_resps"]) if task == "niah_single_1" else (
                [[float(x), str(y)] for x, y in o] == [[float(x), str(y)] for x, y in s["filtered_resps"]])
            same = same_out and mine.loc[i, f"{metric}_dense"] == float(s[metric])
            n, n_same = n + 1, n_same + same
            print(f"{task} doc {i}: lcc {metric}={mine.loc[i, f'{metric}_dense']} lm_eval {metric}={s[metric]} "
                  f"outputs identical={same_out}  lcc output={str(o)[:80]!r}")
    print(f"identical samples: {n_same}/{n}")
    sys.exit(0 if n_same == n else 1)


if __name__ == "__main__":
    main()
