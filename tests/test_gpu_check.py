"""``benchmarks/gpu_check.sh --cpu``: the GPU check's dry run on the CPU covers every section (models and
MoE blocks: train and eval, fp32 and bf16, eager and compiled; the fused PAD assembly; a DDP run; an
ONNX export) and writes its JSON and markdown table, so the script is known to work the day a GPU is there."""

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_dry_run_covers_every_section(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["dry_run"] is True
    rows = report["rows"]
    timed = [r for r in rows if r["section"] in ("models", "moe")]
    cells = {(r["section"], r["pass"], r["precision"], r["mode"].split(" ")[0]) for r in timed}
    assert cells == {(s, p, q, m) for s in ("models", "moe") for p in ("train", "eval") for q in ("fp32", "bf16")
                     for m in ("eager", "compiled")}
    variants = {r["variant"] for r in timed}
    assert variants == {"static", "DY-Conv", "PAD element", "PAD channel", "dense", "MoE", "PAD-MoE element",
                        "PAD-MoE channel"}
    assert all(r["ms"] > 0 for r in timed)
    assert all(r["ratio"] == 1.0 for r in timed if r["variant"] in ("static", "dense"))
    assembly = [r for r in rows if r["section"] == "assembly"]  # checked equal to padnet's before timing
    assert {r["pass"] for r in assembly} == {"forward", "backward"} and all(r["fused_ms"] > 0 for r in assembly)
    (ddp,) = [r for r in rows if r["section"] == "ddp"]
    assert ddp["returncode"] == 0 and ddp["distributed"]["replicas_identical"]
    (onnx,) = [r for r in rows if r["section"] == "onnx"]
    assert onnx["ms"] > 0 and onnx["file_bytes"] > 0
    assert "| models |" in out.with_suffix(".md").read_text()
