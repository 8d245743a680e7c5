"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

KV-cache eviction ("presses", after NVIDIA's kvpress): the contract, and the machinery every press shares.

A press is a compressor that acts at run time: ``compress(model)`` installs it, and from then on, whenever the
model reads text *with a KV cache* inside ``press.armed()``, the press removes entries from each targeted
attention layer's cache right after that layer's attention (kvpress's forward-hook protocol). Everything
else -- validation, ``compressor=<name>``, ``compose`` with weight compressors and ``kv`` quantization, reduce --
is the compressor contract (``lcc/compressors/base.py``).

**One module per method** (``press_<name>.py``): a :class:`Press` subclass whose fields are its parameters
(``param``), and, for a score-based method, ``score(ctx) -> [batch, kv_heads, n_entries]`` (higher = keep).
The shared parameters:

* ``ratio``: fraction of the entries removed (kvpress's ``compression_ratio``): after reading ``n`` tokens the
  cache holds ``int(n * (1 - ratio))`` entries per head; or ``budget``: at most ``budget`` entries per head.
  Exactly one is used (``budget`` set: ``ratio`` must be left null). ``ratio=0`` removes nothing.
* ``chunk``: tokens read per step by ``task=kl`` (the cache is compressed to its budget after every chunk).
* ``query_aware``: in the synthetic tasks, compress after the question (true) or before it (false, kvpress's
  default protocol: context, compress, then question and greedy decoding on the compressed cache).

**Where it acts.** ``compress`` registers the attention function ``lcc_press_<base>`` (it passes through to the
model's own ``sdpa``/``eager``; with a compressed cache it supplies the mask itself: every cached entry is in the
past of every new query, and with per-head budgets (``adakv``) a per-head validity mask) and installs, on each
targeted attention module, a forward hook that evicts, and on the base model a pre-hook that gives every
forward with a cache its true positions (``position_ids`` from the number of tokens the cache has *seen*,
``cache._lcc_seen``, not from its shrunken length). Kept entries stay in positional order (indices sorted),
so attention is unchanged by the gather and StreamingLLM's "recent" stays recent across steps.

**Per-head budgets** (``adakv``): heads keep different numbers of entries. The cache of a layer is gathered to
the largest per-head count; the slots a head does not use are marked invalid in ``cache._lcc_valid[layer]``
(bool [batch, kv_heads, n]) and the attention function masks them (chosen over kvpress's "fake keys", which
depend on the queries; memory is that of the largest head).

**Cost.** Scores never form a full query x key matrix: window presses (snapkv, pyramidkv, tova) use the last
``window_size`` queries only; ``h2o`` sums attention over all queries in blocks of ``QUERY_BLOCK`` queries;
``expected_attention`` uses query statistics (mean, covariance), ``knorm``/``streaming_llm``/``random_kv`` no
queries at all.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F

from lcc import ConfigError
from lcc.compressors.attention_fns import base_function, cache_kwarg, cache_of, register_attention
from lcc.compressors.base import REGISTRY, Compressor, Valid, ints, param
from lcc.compressors.kv import attention_modules, block_attention
from lcc.forward import input_device

PREFIX = "lcc_press_"
#: queries per block when a press sums attention over every query (h2o)
QUERY_BLOCK = 256


def presses() -> dict[str, type["Press"]]:
    """Every registered press, by name."""
    return {n: c for n, c in sorted(REGISTRY.items()) if issubclass(c, Press)}


# ---- the attention function ---------------------------------------------------------------------------------


def make_attention(base: str):
    def lcc_press_attention(module, query, key, value, attention_mask, *args, **kwargs):
        fn = base_function(base, module)
        valid = getattr(module, "_lcc_cur_valid", None)
        q, k = query.shape[2], key.shape[2]
        if getattr(module, "_lcc_press", None) is None or (k == q and valid is None):
            return fn(module, query, key, value, attention_mask, *args, **kwargs)  # no cached prefix
        # a (possibly compressed) cache: every cached entry precedes every new query; causal among the new ones
        mask = torch.ones(q, k, dtype=torch.bool, device=query.device).tril(k - q).view(1, 1, q, k)
        if valid is not None:
            v = valid.to(query.device)
            if v.shape[-1] < k:
                v = torch.cat([v, v.new_ones(*v.shape[:-1], k - v.shape[-1])], -1)
            v = v.repeat_interleave(query.shape[1] // v.shape[1], dim=1)  # kv heads -> query heads
            mask = mask & v.unsqueeze(2)
        elif q == 1:
            mask = None
        if mask is not None and base == "eager":
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~mask, torch.finfo(query.dtype).min)
        return fn(module, query, key, value, mask, *args, **kwargs)
    lcc_press_attention.__name__ = PREFIX + base
    return lcc_press_attention


# ---- hooks -------------------------------------------------------------------------------------------------
def _positions_hook(base):
    """Base-model pre-hook: a forward with a press's cache gets its true positions (the cache's seen count)."""
    kw = cache_kwarg(base)

    def hook(mod, args, kwargs):
        if getattr(mod, "_lcc_press", None) is None:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        n = (ids if ids is not None else emb).shape[1]
        cache = cache_of(kwargs)
        if cache is None:
            if not kwargs.get("use_cache"):
                return None
            from transformers import DynamicCache
            cache = DynamicCache(config=mod.config)
            kwargs[kw] = cache
            kwargs.pop("past_key_values" if kw == "cache" else "cache", None)
        start = getattr(cache, "_lcc_seen", None)
        if start is None:
            start = cache.get_seq_length()
        if kwargs.get("position_ids") is None:
            dev = (ids if ids is not None else emb).device
            kwargs["position_ids"] = torch.arange(start, start + n, device=dev).unsqueeze(0)
        cache._lcc_seen = start + n
        return args, kwargs
    return hook


def _valid_hook(module, args, kwargs):
    """Attention pre-hook: the per-head validity of this layer's cache entries (adakv) for the attention."""
    cache = cache_of(kwargs)
    module._lcc_cur_valid = (getattr(cache, "_lcc_valid", {}) or {}).get(module.layer_idx) if cache else None


def _evict_hook(module, args, kwargs, output):
    """Attention hook: after the layer's attention, compress this layer's cache (when the press is armed)."""
    press: Press | None = getattr(module, "_lcc_press", None)
    if press is None or not press._armed:
        return None
    cache = cache_of(kwargs)
    if cache is None:
        return None
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    press.evict(module, hidden, cache, kwargs)
    return None


# ---- scoring helpers (shared by the presses) ----------------------------------------------------------------
def _partial_rotary(module, cfg) -> float:
    """The share of each head that RoPE rotates (1.0: all of it)."""
    nd, d = getattr(module, "rotary_ndims", None), getattr(module, "head_dim", None)
    if nd is not None and d:
        return nd / d
    rp = getattr(cfg, "rope_parameters", None)
    f = rp.get("partial_rotary_factor") if isinstance(rp, dict) else None
    return float(f if f is not None else getattr(cfg, "partial_rotary_factor", None) or 1.0)


def query_problems(modules) -> list[str]:
    """Why the queries of these attention modules cannot be recomputed by :func:`roped_queries` (empty: they
    can): no separate ``q_proj`` (fused projections, MLA), a ``q_norm`` over all heads rather than per head
    (OLMo2, OLMoE), partial rotary (StableLM, Phi), a rotary that is not Llama's ``rotate_half`` (interleaved:
    Cohere; GPT-OSS) or none (OPT: learned positions)."""
    out: dict[str, str] = {}
    x = torch.arange(8.0).view(1, 8)
    for m in modules:
        cls = type(m).__name__
        if cls in out:
            continue
        d = getattr(m, "head_dim", None)
        cfg = getattr(m, "config", None)
        rh = getattr(sys.modules.get(type(m).__module__), "rotate_half", None)
        qn = getattr(m, "q_norm", None)
        if not (hasattr(m, "q_proj") and hasattr(m, "k_proj")):
            out[cls] = f"{cls} has no separate q_proj/k_proj (fused projection or low-rank attention)"
        elif d is None:
            out[cls] = f"{cls} has no head_dim"
        elif qn is not None and getattr(qn, "weight", None) is not None and qn.weight.numel() != d:
            out[cls] = f"{cls}'s q_norm normalizes all heads together ({qn.weight.numel()} features), not per head"
        elif _partial_rotary(m, cfg) != 1.0:
            out[cls] = f"{cls} rotates only part of each head (partial_rotary_factor={_partial_rotary(m, cfg):g})"
        elif rh is None:
            out[cls] = f"{cls} has no Llama-style rotary embedding (rotate_half) in {type(m).__module__}"
        elif not torch.equal(rh(x), rotate_half(x)):
            out[cls] = f"{cls}'s rotary pairs channels differently from Llama's rotate_half (interleaved)"
    return list(out.values())


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if n == 1 else x.repeat_interleave(n, dim=1)


def prerope_queries(module, hidden: torch.Tensor) -> torch.Tensor:
    """Queries before RoPE, [b, heads, q, head_dim] (q_norm applied where the model has one: Qwen3, Gemma3)."""
    b, q, _ = hidden.shape
    qs = module.q_proj(hidden).view(b, q, -1, module.head_dim).transpose(1, 2)
    return module.q_norm(qs) if hasattr(module, "q_norm") else qs


def roped_queries(module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    qs = prerope_queries(module, hidden)
    return qs * cos.unsqueeze(1) + rotate_half(qs) * sin.unsqueeze(1)


def window_attention(module, hidden: torch.Tensor, keys: torch.Tensor, window: int, position_embeddings
                     ) -> torch.Tensor:
    """Softmax attention of the last ``window`` queries over the keys before the window: [b, heads, window,
    n - window] (kvpress's ``compute_window_attention``; the window's own keys are left out). Query j of the
    window sits at key index n - window + j and sees keys up to there."""
    n = keys.shape[2]
    cos, sin = position_embeddings
    qs = roped_queries(module, hidden[:, -window:], cos[:, -window:], sin[:, -window:])
    ks = repeat_kv(keys, qs.shape[1] // keys.shape[1])
    w = torch.matmul(qs, ks.transpose(2, 3)) / math.sqrt(module.head_dim)
    w = w + torch.triu(torch.full_like(w, float("-inf")), diagonal=n - window + 1)
    w = F.softmax(w, dim=-1, dtype=torch.float32).to(qs.dtype)
    return w[..., :-window]


def attention_sums(module, hidden: torch.Tensor, keys: torch.Tensor, position_embeddings,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention every key receives, summed over the new queries (this forward's tokens), per query head,
    [b, heads, n] (fp32), and how many new queries see each key [n]. Computed in blocks of ``QUERY_BLOCK``
    queries: never a full query x key matrix."""
    q, n = hidden.shape[1], keys.shape[2]
    cos, sin = position_embeddings
    groups = module.config.num_attention_heads // keys.shape[1]
    ks = repeat_kv(keys, groups)
    total = torch.zeros(keys.shape[0], ks.shape[1], n, dtype=torch.float32, device=keys.device)
    kpos = torch.arange(n, device=keys.device)
    for a in range(0, q, QUERY_BLOCK):
        e = min(a + QUERY_BLOCK, q)
        qs = roped_queries(module, hidden[:, a:e], cos[:, a:e], sin[:, a:e])
        w = torch.matmul(qs, ks.transpose(2, 3)) * module.scaling
        qpos = n - q + torch.arange(a, e, device=keys.device)
        allowed = kpos.view(1, -1) <= qpos.view(-1, 1)
        if valid is not None:
            allowed = allowed & repeat_kv(valid, groups).unsqueeze(2)
        w = w.masked_fill(~allowed, float("-inf"))
        total += F.softmax(w, dim=-1, dtype=torch.float32).to(qs.dtype).float().sum(2)
    return total, torch.clamp(n - kpos, max=q)  # key k is seen by the new queries at or after it


# ---- the contract -------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a press's ``score`` sees for one layer: the attention module, its input hidden states (this
    forward's new tokens), the layer's cached keys and values after the forward [b, kv_heads, n, d], the
    position embeddings of the new tokens, tokens seen so far, the per-layer state kept with the cache, and
    the per-head validity of the entries (adakv) or None."""

    module: Any
    hidden: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    position_embeddings: Any
    seen: int
    state: dict
    valid: Optional[torch.Tensor]

    @property
    def n_new(self) -> int:
        return self.hidden.shape[1]


def _ratio_valid() -> Valid:
    return Valid("null (then budget) or a number in [0, 1)",
                 lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1))


class Press(Compressor):
    """Base of every press: removes KV-cache entries at run time (see the module docstring)."""

    ratio: Optional[float] = param(None, "fraction of KV entries removed (kvpress's compression_ratio); null: "
                                         "0.5, or use budget", _ratio_valid())
    budget: Optional[int] = param(None, "entries kept per head (instead of ratio; leave ratio null)",
                                  Valid("null or an integer >= 1", lambda v: v is None or (
                                      isinstance(v, int) and not isinstance(v, bool) and v >= 1)))
    chunk: int = param(512, "task=kl: tokens read per step; the cache is compressed after every chunk",
                       ints(1, 1 << 24))
    query_aware: bool = param(False, "synthetic tasks: compress after the question (true) or before it "
                                     "(false: context, compress, then question and decoding)")

    #: set by the subclass: whether ``score`` needs the module's query projection (for the docs)
    uses_queries: ClassVar[bool] = False
    #: set by the subclass: whether a synthetic prompt's prefill can be recorded once and replayed at any ratio
    #: or budget (:meth:`replay`): the press keeps the top-``budget_of`` entries of ``score`` (ScorerPress's
    #: ``select``) and its scores do not depend on the budget. tests/test_press.py checks every such press.
    replayable: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        self._armed = False
        self._record: dict | None = None
        #: where ``prefill`` finds and keeps records (lcc.cache.prefill.PrefillStore; set by the task runner
        #: with ``cache.press_prefill``), or None
        self.prefill_store = None

    def check(self) -> None:
        if self.budget is not None and self.ratio is not None:
            raise ConfigError(f"budget={self.budget!r} with ratio={self.ratio!r}: give one; valid: budget=N with "
                              f"ratio=null, or ratio=r with budget=null")
        if self.budget is None and self.ratio is None:
            self.ratio = 0.5

    # ---- capabilities ------------------------------------------------------------------------------------------
    def acts_at_runtime(self) -> bool:
        return True

    @staticmethod
    def target_candidates(block):
        """``targets.modules`` selects attention modules, found as ``kv`` finds them (separate k/v projections,
        or a fused-projection ``...Attention`` module that hands its keys and values to the attention interface)."""
        return block_attention(block)

    def check_targets(self, model) -> None:
        """A press that recomputes queries (``uses_queries``) is refused, before anything is installed, on an
        attention whose queries it cannot recompute as the model does."""
        super().check_targets(model)
        if not self.uses_queries:
            return
        bad = query_problems(attention_modules(model, self.targets).values())
        if bad:
            raise ConfigError(
                f"{type(model).__name__} ({getattr(model.config, 'model_type', '?')}) is not supported by "
                f"compressor {self.name}: it recomputes each attention's queries (q_proj, per-head q_norm, "
                f"Llama's rotate_half RoPE over the whole head) to score entries, but {'; '.join(bad)}; valid: "
                f"a press that reads no queries (streaming_llm, knorm, random_kv), or a Llama-like attention")

    def touched_linears(self, model):
        return {}  # no weight changes

    def level(self) -> str:
        s = f"r{self.ratio:g}" if self.budget is None else f"b{self.budget}"
        def default(f):
            return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        extra = [f"{f.name}={getattr(self, f.name)}" for f in self.param_fields()
                 if f.name not in ("ratio", "budget", "chunk", "query_aware", "press")
                 and getattr(self, f.name) != default(f)]
        return s + ("-qa" if self.query_aware else "") + "".join(f",{e}" for e in extra)

    def n_keep(self, seen: int, n: int, module=None) -> int:
        """Entries per head a layer keeps after ``seen`` tokens (cache now holds ``n``)."""
        # kvpress 0.5.5's compute_n_kept: int(n * (1 - ratio)), at least 1
        target = self.budget if self.budget is not None else max(1, int(seen * (1 - self.ratio)))
        return max(0, min(n, target))

    def removes_nothing(self) -> bool:
        return self.budget is None and self.ratio == 0

    # ---- installation ------------------------------------------------------------------------------------------
    def compress(self, model, calib=None):
        mods = attention_modules(model, self.targets)
        if not mods:
            raise ConfigError(f"{self.name}: targets {self.targets.patterns} / layers {self.targets.layers} select "
                              f"no attention module (modules with k_proj and v_proj, or ...Attention modules)")
        cfg = model.config
        base_impl = getattr(cfg, "_attn_implementation", None) or "eager"
        name = register_attention(PREFIX, base_impl, make_attention, 'press') if not base_impl.startswith(PREFIX) else base_impl
        cfg._attn_implementation = name
        base = model.base_model
        rotary = getattr(base, "rotary_emb", None)
        for attn in mods.values():
            attn._lcc_press = self
            attn._lcc_rotary = rotary
            if getattr(attn, "config", cfg) is not cfg:
                attn.config._attn_implementation = name
            if not getattr(attn, "_lcc_press_hooked", False):
                attn.register_forward_pre_hook(_valid_hook, with_kwargs=True)
                attn.register_forward_hook(_evict_hook, with_kwargs=True)
                attn._lcc_press_hooked = True
        if not getattr(base, "_lcc_press_hooked", False):
            base.register_forward_pre_hook(_positions_hook(base), with_kwargs=True)
            base._lcc_press_hooked = True
        base._lcc_press = self
        model._lcc_press = self
        return {"attn_implementation": name, "n_attention": len(mods), "press": self.name}

    @staticmethod
    def remove(model) -> None:
        for m in model.modules():
            if hasattr(m, "_lcc_press"):
                m._lcc_press = None

    @contextlib.contextmanager
    def armed(self):
        """Inside: every forward with a KV cache compresses it after each targeted layer's attention."""
        old, self._armed = self._armed, True
        try:
            yield self
        finally:
            self._armed = old

    @contextlib.contextmanager
    def on_prefill(self, model):
        """Inside: a forward that starts a KV cache (none given, or an empty one) is armed, every later one is
        not -- ``model.generate(prompt)`` compresses the prompt's cache once, after reading all of it, and decodes
        on the compressed cache without evicting (kvpress's ``with press(model): model.generate(...)``). Used by
        the lm-eval bridge, whose prompts have no separate question (so it is the query-aware protocol)."""
        def arm(mod, args, kwargs):
            cache = cache_of(kwargs)
            self._armed = cache is None or cache.get_seq_length() == 0
        hook = model.base_model.register_forward_pre_hook(arm, with_kwargs=True, prepend=True)
        old = self._armed
        try:
            yield self
        finally:
            hook.remove()
            self._armed = old

    # ---- the protocols: chunked reading (task=kl) and context / question (synthetic tasks) -------------------------
    @torch.inference_mode()
    def read(self, model, ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states [T, H] of ``ids`` [T] read ``chunk`` tokens at a time through a KV cache that is
        compressed to its budget after every chunk (task=kl's compressed side)."""
        from transformers import DynamicCache

        base = model.base_model
        ids = ids.view(1, -1).to(input_device(model))
        cache = DynamicCache(config=model.config)
        kw = cache_kwarg(base)
        out = []
        with self.armed():
            for a in range(0, ids.shape[1], self.chunk):
                o = base(input_ids=ids[:, a:a + self.chunk], use_cache=True, **{kw: cache})
                out.append(o.last_hidden_state[0])
        return torch.cat(out)

    def prefill(self, base, prompt: torch.Tensor, question_pos: int, record: dict | None = None):
        """Prefill a synthetic prompt [1, T] (kvpress's protocol): the context up to ``question_pos`` is read and
        the cache compressed once, then the question is read on the compressed cache (``query_aware``: the
        whole prompt is read, then compressed). Returns the last forward's output (its cache holds the rest).

        ``record`` (a dict, for a :attr:`replayable` press): filled with what :meth:`replay` needs to rebuild the
        compressed cache at any ratio or budget without reading the context again -- every layer's keys and
        values before eviction (``keys.L``, ``values.L``), the scores of every targeted layer (``scores.L``)
        and the last hidden state of the compressed read (``last``). Left empty where some targeted layer
        evicted nothing (nothing to rank at this budget)."""
        from transformers import DynamicCache
        cut = self._cut(prompt, question_pos)
        store = self.prefill_store if self.replayable and record is None else None
        if store is not None:  # lcc.cache.prefill: a record of this prompt made at another ratio is replayed
            found = store.get(prompt, cut)
            if found is not None:
                return self.replay(base, found, prompt, question_pos)
            record = {}
        cache = DynamicCache(config=base.config)
        kw = cache_kwarg(base)
        self._record = {} if record is not None and self.replayable else None
        try:
            with self.armed():
                out = base(input_ids=prompt[:, :cut], use_cache=True, **{kw: cache})
            if record is not None:
                record.update(self._complete_record(base, cache, out.last_hidden_state[:, -1:]))
        finally:
            self._record = None
        if store is not None and record:
            store.put(prompt, cut, record)
        if cut < prompt.shape[1]:
            out = base(input_ids=prompt[:, cut:], use_cache=True, **{kw: cache})
        return out

    def _cut(self, prompt: torch.Tensor, question_pos: int) -> int:
        """Where the compressed read of a synthetic prompt ends (the question's start, or the whole prompt)."""
        return prompt.shape[1] if self.query_aware or question_pos <= 0 else question_pos

    def _targeted(self, base) -> dict[int, Any]:
        """The attention modules this press acts on, by layer index."""
        return {m.layer_idx: m for m in base.modules() if getattr(m, "_lcc_press", None) is self
                and hasattr(m, "layer_idx")}

    def _complete_record(self, base, cache, last: torch.Tensor) -> dict:
        """The record of a finished compressed read, or {} if it cannot be replayed (a targeted layer evicted
        nothing, or a layer whose cache is not a plain full-attention cache, e.g. a sliding window)."""
        rec = self._record or {}
        if any(f"scores.{li}" not in rec for li in self._targeted(base)):
            return {}
        for li, layer in enumerate(cache.layers):
            if type(layer).__name__ != "DynamicLayer":
                return {}
            rec.setdefault(f"keys.{li}", layer.keys)  # layers the press does not target: the full cache
            rec.setdefault(f"values.{li}", layer.values)
        rec["last"] = last
        return rec

    @torch.inference_mode()
    def replay(self, base, record: dict, prompt: torch.Tensor, question_pos: int):
        """:meth:`prefill` from a ``record`` of it made at any ratio or budget: the cache rebuilt from the recorded
        keys and values, each targeted layer's top-``budget_of`` entries of the recorded scores kept (the same
        ``topk`` as :meth:`ScorerPress.select`), then the question read on it. Equal to ``prefill`` at this
        press's ratio (tests/test_press.py); the context is not read again."""
        from transformers import DynamicCache
        from transformers.modeling_outputs import BaseModelOutputWithPast
        if not self.replayable:
            raise ValueError(f"{self.name} cannot replay a prefill (its scores depend on the budget)")
        dev = input_device(base)
        cache = DynamicCache(config=base.config)
        n_layers = sum(1 for k in record if k.startswith("keys."))
        for li in range(n_layers):
            cache.update(record[f"keys.{li}"].to(dev), record[f"values.{li}"].to(dev), li)
        cut = self._cut(prompt, question_pos)
        cache._lcc_seen = cut
        for li, mod in sorted(self._targeted(base).items()):
            layer = cache.layers[li]
            ctx = Ctx(mod, None, layer.keys, layer.values, None, cut, {}, None)
            m = self.budget_of(ctx)
            if m < layer.keys.shape[2]:
                _gather(layer, _top(record[f"scores.{li}"].to(dev), m))
        out = BaseModelOutputWithPast(last_hidden_state=record["last"].to(dev), past_key_values=cache)
        if cut < prompt.shape[1]:
            kw = cache_kwarg(base)
            out = base(input_ids=prompt[:, cut:].to(dev), use_cache=True, **{kw: cache})
        return out

    # ---- eviction ----------------------------------------------------------------------------------------------
    def evict(self, module, hidden, cache, kwargs) -> None:
        """Compress the cache of ``module``'s layer to its budget (in place)."""
        if self.removes_nothing():
            return
        li = module.layer_idx
        layer = cache.layers[li]
        keys, values = layer.keys, layer.values
        seen = int(getattr(cache, "_lcc_seen", keys.shape[2]))
        states = cache.__dict__.setdefault("_lcc_state", {})
        valids = cache.__dict__.setdefault("_lcc_valid", {})
        valid = valids.get(li)
        if valid is not None and valid.shape[-1] < keys.shape[2]:
            valid = torch.cat([valid, valid.new_ones(*valid.shape[:-1], keys.shape[2] - valid.shape[-1])], -1)
        ctx = Ctx(module, hidden, keys, values, kwargs.get("position_embeddings"), seen,
                  states.setdefault(li, {}), valid)
        keep = self.select(ctx)  # (indices [b, h, m] sorted, validity [b, h, m] or None) or None
        if keep is None:
            return
        idx, new_valid = keep
        if self._record is not None:  # prefill(record=...): the layer before eviction (gather copies)
            self._record[f"keys.{li}"], self._record[f"values.{li}"] = keys, values
        _gather(layer, idx)
        for k, v in list(ctx.state.items()):  # per-entry state (h2o's sums) follows the kept entries
            if isinstance(v, torch.Tensor) and v.dim() == 3 and v.shape[-1] == keys.shape[2]:
                ctx.state[k] = v.gather(2, idx.repeat_interleave(v.shape[1] // idx.shape[1], dim=1))
        if new_valid is None:
            valids.pop(li, None)
        else:
            valids[li] = new_valid

    def select(self, ctx: Ctx):
        """The entries to keep: (sorted indices [b, kv_heads, m], validity or None), or None for all."""
        raise NotImplementedError


class ScorerPress(Press):
    """A press that ranks entries by ``score`` and keeps the ``n_keep`` best of every head (kvpress's
    ScorerPress; ties broken by ``torch.topk`` as there)."""

    def score(self, ctx: Ctx) -> torch.Tensor:
        raise NotImplementedError

    def budget_of(self, ctx: Ctx) -> int:
        return self.n_keep(ctx.seen, ctx.keys.shape[2], ctx.module)

    def observe(self, ctx: Ctx) -> None:
        """Called at every compression step before the budget is checked (h2o accumulates attention here)."""

    def select(self, ctx: Ctx):
        self.observe(ctx)
        n = ctx.keys.shape[2]
        m = self.budget_of(ctx)
        if m >= n and ctx.valid is None:
            return None
        scores = self.score(ctx)
        if ctx.valid is not None:
            scores = scores.masked_fill(~ctx.valid, float("-inf"))
        if self._record is not None:
            self._record[f"scores.{ctx.module.layer_idx}"] = scores
        return _top(scores, m), None


def _top(scores: torch.Tensor, m: int) -> torch.Tensor:
    """The ``m`` best entries of every head, in positional order (ties broken by ``torch.topk``, as kvpress)."""
    return scores.topk(m, dim=-1).indices.sort(dim=-1).values


def _gather(layer, idx: torch.Tensor) -> None:
    """Keep the entries ``idx`` [b, kv_heads, m] of a cache layer (in place)."""
    keys, values = layer.keys, layer.values
    g = idx.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
    layer.keys = keys.gather(2, g).contiguous()
    if values.shape[-1] != keys.shape[-1]:  # MLA (DeepSeek-V3): value head_dim differs from the keys'
        g = idx.unsqueeze(-1).expand(-1, -1, -1, values.shape[-1])
    layer.values = values.gather(2, g).contiguous()
