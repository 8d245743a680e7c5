"""End to end against kvpress: the greedy answers of SmolLM2-135M to lcc's passkey prompts (ctx 1k, one per depth)
with SnapKV at ratio 0.5, query-agnostic (kvpress's pipeline: context compressed, then the question with its
true positions, then greedy decoding) and query-aware (the whole prompt compressed), by kvpress 0.5.5 and by lcc.

    PYTHONPATH=. python scripts/compare_press_answers.py prompts /tmp/prompts.json            # lcc's venv
    /work/venvs/kvpress/bin/python scripts/compare_press_answers.py kvpress /tmp/prompts.json /tmp/kvpress.json float32
    PYTHONPATH=. python scripts/compare_press_answers.py lcc /tmp/prompts.json /tmp/lcc.json float32
    python scripts/compare_press_answers.py diff /tmp/kvpress.json /tmp/lcc.json
"""
import glob
import json
import os
import sys

import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
MODES = {"snapkv": False, "snapkv-qa": True}
NEW = 8


def model_dir():
    root = os.environ.get("LCC_CACHE", os.path.expanduser("~/.cache/lcc"))
    return sorted(glob.glob(os.path.join(root, "models", "SmolLM2-135M-Instruct*[0-9]")))[-1]


def prompts(out):
    from lcc import tasks
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir())
    ss = tasks.build({"name": "passkey", "n_samples": 1}).samples(tok, 1024, 0)
    json.dump([{"prompt": s.prompt.tolist(), "q": s.question_pos} for s in ss], open(out, "w"))


def greedy(step, first, p):
    gen = [first]
    for i in range(NEW - 1):
        gen.append(step(gen[-1], p + i))
    return gen


def kvpress_answers(src, out, dtype):
    from kvpress import SnapKVPress
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
    tok = AutoTokenizer.from_pretrained(model_dir())
    model = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=getattr(torch, dtype),
                                                 attn_implementation="sdpa").eval()
    res = {}
    for mode, qa in MODES.items():
        res[mode] = []
        for x in json.load(open(src)):
            ids, cache = torch.tensor(x["prompt"]).view(1, -1), DynamicCache()
            cut = ids.shape[1] if qa else x["q"]
            with torch.no_grad():
                with SnapKVPress(compression_ratio=0.5)(model):
                    o = model(input_ids=ids[:, :cut], past_key_values=cache)
                if cut < ids.shape[1]:
                    o = model(input_ids=ids[:, cut:], past_key_values=cache,
                              position_ids=torch.arange(cut, ids.shape[1]).view(1, -1))

                def step(t, p):
                    return int(model(input_ids=torch.tensor([[t]]), past_key_values=cache,
                                     position_ids=torch.tensor([[p]])).logits[0, -1].argmax())
                gen = greedy(step, int(o.logits[0, -1].argmax()), ids.shape[1])
            res[mode].append(tok.decode(gen, skip_special_tokens=True))
    json.dump(res, open(out, "w"))
    print(res)


def lcc_answers(src, out, dtype):
    from lcc.compressors import build
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir())
    res = {}
    for mode, qa in MODES.items():
        model = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=getattr(torch, dtype),
                                                     attn_implementation="sdpa").eval()
        press = build({"name": "snapkv", "ratio": 0.5, "query_aware": qa})
        press.compress(model)
        res[mode] = []
        for x in json.load(open(src)):
            with torch.no_grad():
                o = press.prefill(model.model, torch.tensor(x["prompt"]).view(1, -1), x["q"])
                cache = o.cache

                def step(t, p):  # positions come from the press's cache (tokens seen)
                    h = model.model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True).last_hidden_state
                    return int(model.lm_head(h[0, -1]).argmax())
                gen = greedy(step, int(model.lm_head(o.last_hidden_state[0, -1]).argmax()), 0)
            res[mode].append(tok.decode(gen, skip_special_tokens=True))
    json.dump(res, open(out, "w"))
    print(res)


def diff(a, b):
    ra, rb = json.load(open(a)), json.load(open(b))
    same = sum(x == y for m in MODES for x, y in zip(ra[m], rb[m]))
    total = sum(len(ra[m]) for m in MODES)
    for m in MODES:
        for x, y in zip(ra[m], rb[m]):
            print(f"{m:10s} {'==' if x == y else '!='} {x!r} {y!r}")
    print(f"{same} / {total} answers identical")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"prompts": prompts, "kvpress": kvpress_answers, "lcc": lcc_answers, "diff": diff}[cmd](*args)
