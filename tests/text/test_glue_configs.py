"""The committed GLUE configs read no directory outside the repository: ``glue.data_dir`` is null (the
``datasets`` library's glue) and a GLUE TSV directory comes in as ``--set glue.data_dir=PATH``, which
reaches every run of a sweep. Here it is the shared data (skipped when absent), as the Makefile passes it."""

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from padnet.text.glue_task import GlueConfig
from padnet.train.config import load_config
from padnet.train.sweep import load_sweep
from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
GLUE = SHARED_DATA / "glue"
RUNS = ["glue_dense.yaml", "glue_moe.yaml", "glue_pad_moe.yaml"]
SWEEPS = ["glue_long.yaml", "glue_sweep.yaml"]
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"no GLUE TSV directory at {GLUE}")


@pytest.mark.parametrize("name", RUNS + SWEEPS)
def test_committed_glue_configs_default_to_no_local_directory(name):
    text = (ROOT / "configs" / name).read_text()
    assert "../shared" not in text
    assert re.search(r"^\s*data_dir: null\b", text, re.M), f"configs/{name}: glue.data_dir should default to null"


@needs_glue
@pytest.mark.parametrize("name", RUNS)
def test_run_configs_take_the_glue_directory_as_an_override(name):
    config = load_config(ROOT / "configs" / name, [f"glue.data_dir={GLUE}"])
    assert config.section("glue", GlueConfig).data_dir == str(GLUE)


@needs_glue
@pytest.mark.parametrize("name", SWEEPS)
def test_the_override_reaches_every_run_of_a_glue_sweep(name):
    configs = load_sweep(ROOT / "configs" / name, [f"glue.data_dir={GLUE}"])
    assert configs and {c.section("glue", GlueConfig).data_dir for c in configs} == {str(GLUE)}


def test_the_makefile_passes_the_glue_directory_to_the_glue_sweeps():
    makefile = (ROOT / "Makefile").read_text()
    for config in SWEEPS:
        recipe = re.search(rf"--config configs/{config}[^\n]*", makefile)
        assert recipe and "--set glue.data_dir=$(GLUE_DIR)" in recipe.group(0), f"make's sweep of {config}"
