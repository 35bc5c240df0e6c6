"""The README's library and deployment blocks run as written (offline, on a small input), with the
names they leave to the reader (a scoring set, an example input, a builder) defined first."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(heading: str) -> str:
    """The first fenced python block after ``heading`` in the README."""
    text = README.read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


@pytest.mark.slow
def test_library_and_deployment_blocks_run_as_written(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    scope = {
        # One batch: the partition's 5 rounds over resnet18's 11M kernel entries take most of this test.
        "scoring_batches": [(torch.randn(2, 3, 16, 16, generator=g), torch.tensor([1, 7]))],
        "example_input": torch.randn(1, 3, 16, 16, generator=g),
        "path": "model.safetensors",
        "my_builder": lambda: torchvision.models.resnet18(num_classes=10),
    }
    exec(compile(python_block("## Library"), "README.md#library", "exec"), scope)
    trained = scope["model"]
    exec(compile(python_block("### Deployment and model files"), "README.md#deployment", "exec"), scope)
    loaded = scope["model"]
    assert (loaded is not trained
            and loaded.padnet_arch == {"name": "torchvision.resnet18", "kwargs": {"num_classes": 10}})
    x = torch.randn(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), trained.eval()(x), atol=0, rtol=0)
