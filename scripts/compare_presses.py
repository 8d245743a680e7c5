"""lcc's KV-cache presses against NVIDIA's kvpress 0.5.5, the reference: same model, same input, their code.

kvpress pins transformers < 5.3, so it runs in a venv of its own (never lcc's dependency):

    python3 -m venv /work/venvs/kvpress
    /work/venvs/kvpress/bin/pip install torch==2.13.0 'transformers>=4.56,<5.3' kvpress==0.5.5

1. record (kvpress's venv; imports kvpress, not lcc): runs every kvpress press that lcc has on SmolLM2-135M
   (the safetensors copy lcc makes of the embedded model, fp32, CPU) over the first ``--tokens`` tokens of
   CPython's docs (``pydoc_data.topics``), one prefill with the press's context manager, and stores the input
   ids, the press's scores (layers ``LAYERS``) and the positions kept in every layer and head:

    /work/venvs/kvpress/bin/python scripts/compare_presses.py record --out tests/fixtures/kvpress_presses.json

2. compare (lcc's venv): the same presses through lcc (``compress`` + one armed prefill), compared with the
   record: max |score difference| / max |score| and the positions kept that differ, layer by layer:

    PYTHONPATH=. python scripts/compare_presses.py compare --fixture tests/fixtures/kvpress_presses.json

``tests/test_press_reference.py`` runs step 2 against the recorded fixture.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

RATIO = 0.5
LAYERS = (0, 10, 20, 29)
#: lcc name -> (lcc parameters, kvpress constructor as text, attention implementation)
PRESSES = {
    "knorm": ({}, "KnormPress(compression_ratio={r})", "sdpa"),
    "random_kv": ({"seed": 0}, "RandomPress(compression_ratio={r}, seed=0)", "sdpa"),
    "streaming_llm": ({"n_sink": 4}, "StreamingLLMPress(compression_ratio={r}, n_sink=4)", "sdpa"),
    "snapkv": ({"window_size": 64, "kernel_size": 5},
               "SnapKVPress(compression_ratio={r}, window_size=64, kernel_size=5)", "sdpa"),
    "tova": ({}, "TOVAPress(compression_ratio={r})", "sdpa"),
    "h2o": ({}, "ObservedAttentionPress(compression_ratio={r})", "eager"),
    "pyramidkv": ({"window_size": 64, "kernel_size": 5, "beta": 20},
                  "PyramidKVPress(compression_ratio={r}, window_size=64, kernel_size=5, beta=20)", "sdpa"),
    "expected_attention": ({"n_future_positions": 512, "n_sink": 4, "use_covariance": True, "use_vnorm": True},
                           "ExpectedAttentionPress(compression_ratio={r}, n_future_positions=512, n_sink=4, "
                           "use_covariance=True, use_vnorm=True)", "sdpa"),
    "adakv": ({"press": "snapkv", "alpha_safeguard": 0.2},
              "AdaKVPress(SnapKVPress(compression_ratio={r}), alpha_safeguard=0.2)", "sdpa"),
}


def model_dir(arg: str | None) -> str:
    if arg:
        return arg
    root = os.environ.get("LCC_CACHE", str(Path.home() / ".cache" / "lcc"))
    found = sorted(glob.glob(os.path.join(root, "models", "SmolLM2-135M-Instruct*[0-9]")))
    if not found:
        sys.exit(f"no SmolLM2 copy under {root}/models: run `python -m lcc.models` in lcc's venv, or pass --model")
    return found[-1]


def load(path: str, attn: str):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn).eval()


def input_ids(path: str, n: int) -> torch.Tensor:
    from pydoc_data.topics import topics
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    text = "\n\n".join(topics[k] for k in sorted(topics))
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"][:n]).view(1, -1)


def kept_positions(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Positions (per head, sorted) of the rows of ``after`` in ``before`` [b, h, n, d] (a press's gather)."""
    eq = (after[0].unsqueeze(2) == before[0].unsqueeze(1)).all(-1)  # [h, m, n]
    assert bool((eq.sum(-1) >= 1).all()), "a kept key is not one of the cached keys"
    return eq.float().argmax(-1).sort(-1).values


def as_mask(k: torch.Tensor, n: int) -> torch.Tensor:
    """Kept positions (sorted indices [h, m], or already a mask [h, n]) as a bool mask [h, n]."""
    if k.dtype == torch.bool:
        return k
    mask = torch.zeros(k.shape[0], n, dtype=torch.bool)
    return mask.scatter_(1, k.long(), True)


def pack(mask: torch.Tensor) -> torch.Tensor:
    import numpy as np
    return torch.from_numpy(np.packbits(mask.numpy(), axis=-1))


def unpack(bits: torch.Tensor, n: int) -> torch.Tensor:
    import numpy as np
    return torch.from_numpy(np.unpackbits(bits.numpy(), axis=-1)[..., :n].astype(bool))


# ---- the fixture: kvpress's outputs as plain JSON (dtype, shape, values; float32 values round-trip exactly) ----------
def save_fixture(tensors: dict, meta: dict, path: str) -> None:
    doc = {"metadata": meta, "tensors": {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                                             "values": t.flatten().tolist()} for k, t in sorted(tensors.items())}}
    Path(path).write_text(json.dumps(doc, separators=(",", ":")))


def load_fixture(path: str) -> tuple[dict, dict]:
    doc = json.loads(Path(path).read_text())
    return ({k: torch.tensor(v["values"], dtype=getattr(torch, v["dtype"])).view(v["shape"])
             for k, v in doc["tensors"].items()}, doc["metadata"])


# ---- 1. record kvpress's answers ----------------------------------------------------------------------------------
def record(args) -> None:
    import kvpress  # noqa: F401  (patches the attention functions for AdaKV)
    from kvpress import (AdaKVPress, ExpectedAttentionPress, KnormPress, ObservedAttentionPress,  # noqa: F401
                         PyramidKVPress, RandomPress, SnapKVPress, StreamingLLMPress, TOVAPress)
    from transformers import DynamicCache

    path = model_dir(args.model)
    ids = input_ids(path, args.tokens)
    out = {"input_ids": ids[0].clone()}
    for name, (_, ctor, attn) in PRESSES.items():
        model = load(path, attn)
        press = eval(ctor.format(r=RATIO))
        scorer = press.press if isinstance(press, AdaKVPress) else press
        scores, kept = {}, {}
        real_score, real_compress = scorer.score, press.compress

        def score(module, *a, _f=real_score, **k):
            s = _f(module, *a, **k)
            scores[module.layer_idx] = s.detach().float().clone()
            return s

        def compress(module, hidden, keys, values, *a, _f=real_compress, **k):
            k2, v2 = _f(module, hidden, keys, values, *a, **k)
            if isinstance(press, AdaKVPress):  # masks instead of gathering: kept = not masked
                mask = torch.ones(keys.shape[1], keys.shape[2], dtype=torch.bool)
                _, h, s = module.masked_key_indices
                mask[h, s] = False
                kept[module.layer_idx] = mask
            else:
                kept[module.layer_idx] = kept_positions(keys, k2)
            return k2, v2
        scorer.score, press.compress = score, compress
        with torch.no_grad(), press(model):
            model.model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
        for i in LAYERS:
            out[f"{name}.scores.{i}"] = scores[i][0].contiguous()
        for i, k in kept.items():  # a bit per (head, position): kept
            out[f"{name}.kept.{i}"] = pack(as_mask(k, ids.shape[1]))
        print(f"{name}: recorded {len(kept)} layers", flush=True)
    import transformers
    meta = {"kvpress": __import__("importlib.metadata").metadata.version("kvpress"),
            "transformers": transformers.__version__, "torch": torch.__version__, "ratio": str(RATIO),
            "model": os.path.basename(path), "tokens": str(args.tokens),
            "command": "/work/venvs/kvpress/bin/python scripts/compare_presses.py record --out " + args.out}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_fixture(out, meta, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB)")


# ---- 2. lcc against the record ------------------------------------------------------------------------------------
def lcc_run(name: str, model, ids: torch.Tensor) -> tuple[dict, dict]:
    """lcc's press ``name`` on ``model``: (scores per layer, kept positions per layer)."""
    from transformers import DynamicCache

    from lcc.compressors import build
    params, _, _ = PRESSES[name]
    press = build({"name": name, "ratio": RATIO, **params})
    press.compress(model)
    scorer = getattr(press, "inner", press)
    scores, kept = {}, {}
    real_score, real_select = scorer.score, press.select

    def score(ctx, _f=real_score):
        s = _f(ctx)
        scores[ctx.module.layer_idx] = s.detach().float().clone()
        return s

    def select(ctx, _f=real_select):
        got = _f(ctx)
        idx, valid = got
        if valid is None:
            kept[ctx.module.layer_idx] = idx[0]
        else:
            mask = torch.zeros(idx.shape[1], ctx.keys.shape[2], dtype=torch.bool)
            for h in range(idx.shape[1]):
                mask[h, idx[0, h][valid[0, h]]] = True
            kept[ctx.module.layer_idx] = mask
        return got
    scorer.score, press.select = score, select
    with torch.no_grad(), press.armed():
        model.model(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True)
    return scores, kept


def compare_one(name: str, ref: dict, model, ids: torch.Tensor) -> dict:
    scores, kept = lcc_run(name, model, ids)
    rel = max(float((scores[i][0] - ref[f"{name}.scores.{i}"]).abs().max() / ref[f"{name}.scores.{i}"].abs().max())
              for i in LAYERS)
    n, n_layers = ids.shape[1], len([k for k in ref if k.startswith(f"{name}.kept.")])
    differ, total, count_differ = 0, 0, 0
    for i in range(n_layers):
        r, mine = unpack(ref[f"{name}.kept.{i}"], n), as_mask(kept[i], n)
        count_differ += int((r.sum(-1) != mine.sum(-1)).sum())  # heads whose number of kept entries differs
        differ += int((r & ~mine).sum())  # kept by kvpress, not by lcc
        total += int(r.sum())
    return {"press": name, "score_rel_max": rel, "kept_total": total, "kept_differ": differ,
            "count_differ": count_differ, "layers": n_layers}


def compare(args) -> list[dict]:
    ref, meta = load_fixture(args.fixture)
    path = model_dir(args.model)
    ids = ref["input_ids"].view(1, -1)
    rows = []
    for name, (_, _, attn) in PRESSES.items():
        if args.only and name not in args.only:
            continue
        rows.append(compare_one(name, ref, load(path, attn), ids))
        r = rows[-1]
        print(f"| {name} | {r['score_rel_max']:.2e} | {r['kept_differ']} / {r['kept_total']} |", flush=True)
    print(json.dumps({"reference": meta}))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", default="tests/fixtures/kvpress_presses.json")
    r.add_argument("--tokens", type=int, default=512)
    r.add_argument("--model")
    c = sub.add_parser("compare")
    c.add_argument("--fixture", default="tests/fixtures/kvpress_presses.json")
    c.add_argument("--model")
    c.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.cmd == "record":
        record(args)
    else:
        print("| press | max score diff / max score | kept positions differing |\n|---|---:|---:|")
        compare(args)


if __name__ == "__main__":
    main()
