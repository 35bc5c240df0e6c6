"""Gradient accumulation under DistributedDataParallel (``accumulate_steps`` with torchrun): 2 processes
x 2 micro-batches of 4 step as one process on the batch of 16 (float64 oracle), and DDP all-reduces the
gradients once per optimizer step, not once per micro-batch (``no_sync``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.distributed.test_ddp_training import torchrun
from tests.helpers import F64_RELATIVE_TOLERANCE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")]


def test_accumulated_ddp_step_equals_one_batch_and_syncs_once(tmp_path):
    done = torchrun([str(Path(__file__).with_name("accumulate_ddp.py")), str(tmp_path / "out")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"out.rank{rank}.json").read_text())
        tolerance = F64_RELATIVE_TOLERANCE * result["scale"]
        assert max(result["diffs"].values()) <= tolerance, result["diffs"]
        assert abs(result["loss"] - result["oracle_loss"]) <= F64_RELATIVE_TOLERANCE * max(1.0, result["oracle_loss"])
        assert result["accumulated_calls"] == result["single_calls"] > 0
