"""Compressed checkpoints made locally, for ``compressor=checkpoint`` (offline tests and evidence):

* ``requantize_gguf(src, dst, qtype)``: a GGUF file's weight matrices re-quantized to another GGML type with
  the ``gguf`` package's own ``gguf.quants.quantize`` (the types it can write: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
  F16, BF16, TQ1_0, TQ2_0, MXFP4); every metadata field (tokenizer included) is copied, the 1-D tensors (norms)
  are kept, ``general.file_type`` is left as it was (transformers reads the tensors' own types).
* ``compressed_tensors_checkpoint(model_dir, dst, bits, group_size)``: a float checkpoint quantized with
  compressed-tensors' own API (``apply_quantization_config``, its ``calculate_qparams`` and ``ModelCompressor``,
  pack-quantized format), as llm-compressor writes them for vLLM.

``python -m lcc.checkpoints gguf Q4_0 OUT.gguf`` re-quantizes the embedded SmolLM2; ``python -m lcc.checkpoints
ct 4 128 OUT_DIR`` writes its compressed-tensors w4g128 checkpoint.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lcc.models import prepare_embedded, smollm2_gguf

#: the GGML types gguf.quants.quantize writes (checked: each round-trips a random matrix)
WRITABLE = ("F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "MXFP4", "TQ2_0", "TQ1_0")


def requantize_gguf(src: str | Path, dst: str | Path, qtype: str, keep: tuple[str, ...] = ("token_embd.weight",)
                    ) -> Path:
    """Write ``dst``: ``src`` with every 2-D weight dequantized and quantized to ``qtype``. Tensors named in
    ``keep`` keep their type (default: the token embedding, which SmolLM2 ties to its output head; llama.cpp's
    quantizer also keeps it at higher precision), as does a tensor whose rows do not split into ``qtype``'s
    blocks."""
    import gguf
    from gguf import quants

    if qtype not in WRITABLE:
        raise ValueError(f"qtype={qtype!r}: gguf.quants can write {', '.join(WRITABLE)}")
    target = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[target][0]
    reader = gguf.GGUFReader(str(src))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(dst), arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():  # as gguf's own gguf_new_metadata copies them
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        shape = [int(x) for x in reversed(t.shape.tolist())]  # numpy order: rows last dim = row length
        if len(shape) == 2 and shape[-1] % block == 0 and t.tensor_type != target and t.name not in keep:
            w = quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
            writer.add_tensor(t.name, quants.quantize(w, target), raw_dtype=target)
        else:
            plain = t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=None if plain else t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def compressed_tensors_checkpoint(src: str | Path, dst: str | Path, bits: int = 4, group_size: int = 128,
                                  symmetric: bool = True) -> Path:
    """Write ``dst``: the float checkpoint ``src`` with every decoder Linear quantized to ``bits``-bit integers,
    one scale per group of ``group_size`` inputs (min/max, compressed-tensors' own ``calculate_qparams``),
    packed in compressed-tensors' ``pack-quantized`` format by its ``ModelCompressor``; lm_head kept (as
    llm-compressor's presets do). The tokenizer is copied."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 QuantizationStatus, apply_quantization_config)
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group",
                            group_size=group_size)
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                                ignore=["lm_head"], quantization_status=QuantizationStatus.INITIALIZED)
    apply_quantization_config(model, config)
    with torch.no_grad():
        for _, m in model.named_modules():
            if getattr(m, "quantization_scheme", None) is None or not isinstance(m, torch.nn.Linear):
                continue
            if m.weight.shape[1] % group_size:
                raise ValueError(f"group_size={group_size} does not divide the input width {m.weight.shape[1]} of "
                                 f"a Linear; valid: a divisor of every width (SmolLM2: 32, 64, 192)")
            w = m.weight.reshape(m.weight.shape[0], -1, group_size)
            scale, zp = calculate_qparams(w.amin(-1), w.amax(-1), args)
            m.weight_scale.data.copy_(scale.reshape(m.weight_scale.shape))
            if hasattr(m, "weight_zero_point"):
                m.weight_zero_point.data.copy_(zp.reshape(m.weight_zero_point.shape))
            m.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    dst = Path(dst)
    model.save_pretrained(dst)
    compressor.update_config(str(dst))
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lcc.checkpoints", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gguf", help="re-quantize the embedded SmolLM2 GGUF (or --src) to another GGML type")
    g.add_argument("qtype", choices=WRITABLE)
    g.add_argument("out")
    g.add_argument("--src", default=None)
    g.add_argument("--all", action="store_true", help="re-quantize the token embedding too (default: kept)")
    c = sub.add_parser("ct", help="a compressed-tensors checkpoint of the embedded SmolLM2 (or --src folder)")
    c.add_argument("bits", type=int)
    c.add_argument("group_size", type=int)
    c.add_argument("out")
    c.add_argument("--src", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "gguf":
        print(requantize_gguf(a.src or smollm2_gguf(), a.out, a.qtype, keep=() if a.all else ("token_embd.weight",)))
    else:
        print(compressed_tensors_checkpoint(a.src or prepare_embedded(), a.out, a.bits, a.group_size))


if __name__ == "__main__":
    main()
