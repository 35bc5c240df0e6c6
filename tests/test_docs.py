"""The documentation runs as written: the fenced ``python`` blocks of README.md and of every page directly
under docs/, and every ``docs/method.md#...`` the repository cites names a section that exists.

Convention (docs/development.md): every ```` ```python ```` block runs, in page order, in one namespace per
page that first holds the names the pages leave to the reader (``reader_names`` below). A block that only
illustrates is marked by the line ``<!-- not run: REASON -->`` directly above its fence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import padnet

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
NOT_RUN = re.compile(r"^\s*<!-- not run: .+ -->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    runs: bool


def python_blocks(page: Path) -> list[Block]:
    """The fenced python blocks of ``page``, dedented (blocks inside list items are indented)."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang, start = opening.group(1), opening.group(2), i
        i += 1
        body = []
        while i < len(lines) and not re.match(rf"^{indent}```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if lang == "python":
            marked = start > 0 and bool(NOT_RUN.match(lines[start - 1]))
            blocks.append(Block(page, start + 1, "\n".join(body) + "\n", runs=not marked))
    return blocks


def test_every_page_is_found_and_every_python_block_is_plain_python():
    assert ROOT / "docs" / "usage.md" in PAGES and ROOT / "docs" / "method.md" in PAGES
    for page in PAGES:
        for block in python_blocks(page):
            compile(block.code, f"{page.name}:{block.line}", "exec")  # even the illustrative ones parse


def reader_names(torchvision) -> dict:
    """The names the pages use without defining them: a scoring set, an example input, a builder..."""
    g = torch.Generator().manual_seed(0)
    return {
        "torch": torch,
        "padnet": padnet,
        # One batch: the partition's 5 rounds over resnet18's 11M kernel entries take most of this test.
        "scoring_batches": [(torch.randn(2, 3, 16, 16, generator=g), torch.tensor([1, 7]))],
        "example_input": torch.randn(1, 3, 16, 16, generator=g),
        "path": "model.safetensors",
        "my_builder": lambda: torchvision.models.resnet18(num_classes=10),
        "layer": padnet.layers.PADConv2d(4, 4, 3, padding=1),
    }


# A block identical to one of the README's (the guide repeats its library and deployment blocks) runs once,
# with the README: the partition over resnet18 in them costs most of a minute on this machine.
README_CODE = {block.code for block in python_blocks(PAGES[0]) if block.runs}


def to_run(page: Path) -> list[Block]:
    return [b for b in python_blocks(page) if b.runs and (page == PAGES[0] or b.code not in README_CODE)]


RUNNABLE = [page for page in PAGES if to_run(page)]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_the_python_blocks_of_a_page_run_as_written(page, tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.chdir(tmp_path)
    scope = reader_names(torchvision)
    strategy = padnet.layers.conv_strategy.get_conv_strategy()
    try:
        for block in to_run(page):
            before = scope.get("model")
            exec(compile(block.code, f"{page.relative_to(ROOT)}:{block.line}", "exec"), scope)
            if "padnet.load(" in block.code:
                # The deployment block: the file it saved rebuilds the model it saved, exactly.
                loaded = scope["model"]
                assert loaded is not before
                x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
                with torch.no_grad():
                    torch.testing.assert_close(loaded.eval()(x), before.eval()(x), atol=0, rtol=0)
    finally:
        padnet.layers.set_conv_strategy(strategy)


def test_the_library_and_deployment_blocks_are_in_the_readme_and_the_guide():
    for page in (ROOT / "README.md", ROOT / "docs" / "usage.md"):
        code = [block.code for block in python_blocks(page) if block.runs]
        assert any("padnet.partition(" in c for c in code) and any("padnet.load(" in c for c in code), page


# ----------------------------------------------------------------------------- anchors of docs/method.md
def slug(heading: str) -> str:
    """The anchor GitHub and mkdocs give a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return re.sub(r"\s+", "-", text)


def method_anchors() -> set[str]:
    text = (ROOT / "docs" / "method.md").read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


CITING = ["src", "tests", "configs", "benchmarks", "docs"]


def test_every_cited_method_anchor_exists():
    anchors = method_anchors()
    assert {"dynamic-layers", "pad-layers", "partition", "placement", "storage", "recipes",
            "granularity"} <= anchors
    files = [ROOT / "README.md", ROOT / "Makefile"] + [
        f for d in CITING for f in (ROOT / d).rglob("*") if f.suffix in (".py", ".md", ".yaml", ".yml")]
    missing = []
    for f in files:
        for m in re.finditer(r"method\.md#([\w-]+)", f.read_text(errors="replace")):
            if m.group(1) not in anchors:
                missing.append(f"{f.relative_to(ROOT)}: #{m.group(1)}")
    assert not missing, f"docs/method.md has no section for: {missing}"
