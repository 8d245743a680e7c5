"""``python -m lcc.tasks pydoc-task DIR``: write the offline lm-eval task ``lcc_pydoc_cloze`` into DIR."""
import argparse

from lcc.tasks.lm_eval import TASK_NAME, make_pydoc_task

ap = argparse.ArgumentParser(prog="python -m lcc.tasks", description=__doc__)
ap.add_argument("command", choices=["pydoc-task"])
ap.add_argument("folder")
ap.add_argument("--n-docs", type=int, default=200)
args = ap.parse_args()
d = make_pydoc_task(args.folder, n_docs=args.n_docs)
print(f"wrote {TASK_NAME} into {d}: run it with task=lm_eval task.include_path={d} task.tasks=[{TASK_NAME}]")
