"""bench/gpu.py --small: the GPU benchmark's whole flow on the CPU with a tiny config, in seconds."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_small_end_to_end(tmp_path):
    docs = tmp_path / "benchmarks.md"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--small", "--json", str(tmp_path / "b.json"),
                          "--out-dir", str(tmp_path / "out"), "--write-docs", str(docs)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    table = text[text.index("| arch | tokens | bare fwd s"):]  # the table is printed last
    rows = [line for line in table.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 2  # one per length, 128 and 256 tokens
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and float(cells[5]) > 0
    for name in ("quant", "magnitude"):
        assert f"| {name} |" in table
    data = json.loads((tmp_path / "b.json").read_text())
    assert set(data["eval"]) == {"tiny@128", "tiny@256"}
    assert all(r["kl_mean"] > 0 for r in data["eval"].values())
    written = docs.read_text()
    assert "<!-- bench:begin -->" in written and "| tiny | 128 |" in written
    # a second write replaces the block between the markers and keeps the text around it
    docs.write_text("# Benchmarks\n\nintro\n\n" + written[written.index("<!-- bench:begin -->"):] + "\nnotes\n")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu
    finally:
        sys.path.pop(0)
    gpu.write_docs(docs, "new table\n")
    again = docs.read_text()
    assert "intro" in again and "notes" in again and "new table" in again and "| tiny | 128 |" not in again
