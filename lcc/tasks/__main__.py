"""``python -m lcc.tasks pydoc-task DIR``: write the offline lm-eval task ``lcc_pydoc_cloze`` into DIR."""
import argparse
import os

from lcc.tasks.lm_eval import TASK_NAME, make_pydoc_task

ap = argparse.ArgumentParser(prog="python -m lcc.tasks", description=__doc__)
ap.add_argument("command", choices=["pydoc-task"])
ap.add_argument("folder")
ap.add_argument("--n-docs", type=int, default=200)
args = ap.parse_args()
if os.path.exists(args.folder) and not os.path.isdir(args.folder):
    ap.error(f"{args.folder} exists and is not a folder; valid: a new or existing folder")
if args.n_docs < 1:
    ap.error(f"--n-docs {args.n_docs}: valid: an integer >= 1")
try:
    d = make_pydoc_task(args.folder, n_docs=args.n_docs)
except OSError as e:
    ap.error(f"cannot write the task into {args.folder}: {e.strerror or e}")
print(f"wrote {TASK_NAME} into {d}: run it with task=lm_eval task.include_path={d} task.tasks=[{TASK_NAME}]")
