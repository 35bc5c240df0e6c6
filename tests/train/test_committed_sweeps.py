"""The committed vision sweeps load as written, and the Makefile's two-process split of the evidence sweep
(issue 19) runs every configuration exactly once."""

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

from padnet.data.fashion_mnist import find_fashion_mnist
from padnet.train.sweep import load_sweep
from tests.helpers import FASHION_MNIST

ROOT = Path(__file__).resolve().parents[2]


def _fashion_mnist_missing() -> str | None:
    """Why the sweeps' pre-flight data check would fail here (the library's own search), or None."""
    try:
        find_fashion_mnist(FASHION_MNIST)
    except FileNotFoundError as err:
        return str(err)
    return None


MISSING = _fashion_mnist_missing()
needs_fmnist = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def _names(configs):
    return list(dict.fromkeys(c.name for c in configs))


@needs_fmnist
def test_the_evidence_sweep_has_the_issue_configurations_with_five_seeds():
    configs = load_sweep(ROOT / "configs" / "fmnist_evidence.yaml")
    assert len(configs) == 12 * 5 and {c.seed for c in configs} == {0, 1, 2, 3, 4}
    by_name = {c.name: c for c in configs if c.seed == 0}
    dynamic = lambda name: by_name[name].dynamic  # noqa: E731
    assert dynamic("static").mode == "static" and dynamic("dyconv").routing == "softmax"
    assert dynamic("condconv").mode == "dynamic" and dynamic("condconv").routing == "sigmoid"
    assert [dynamic(f"pad-{k}").dynamic_ratio for k in ("0.1", "0.3", "0.5")] == [0.1, 0.3, 0.5]
    ablations = {n: c for n, c in by_name.items() if n.startswith("pad-0.3-")}
    assert {c.dynamic.dynamic_ratio for c in ablations.values()} == {0.3}
    assert by_name["pad-0.3-random"].partition.scorer == "random"
    assert by_name["pad-0.3-magnitude"].partition.scorer == "magnitude"
    assert by_name["pad-0.3-oneshot"].partition.rounds == 1 and by_name["pad-0.3"].partition.rounds == 5
    assert [by_name[f"pad-0.3-lambda-{m}"].dynamic.lambda_mode for m in ("static", "dynamic", "none")] == [
        "static", "dynamic", "none"]
    # Everything else is the one recipe: same data, epochs and model for every configuration.
    assert len({(c.epochs, c.batch_size, repr(c.sections["data"]), repr(c.sections["model"]), repr(c.optim))
                for c in configs}) == 1


@needs_fmnist
def test_the_makefile_split_runs_every_evidence_configuration_once():
    names = _names(load_sweep(ROOT / "configs" / "fmnist_evidence.yaml"))
    makefile = (ROOT / "Makefile").read_text()
    halves = [re.findall(r"--only (\S+)", re.search(rf"^EVIDENCE_{h} :=(.*)$", makefile, re.M).group(1))
              for h in "AB"]
    for name in names:
        matched = [h for h, patterns in zip("AB", halves) if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        assert len(matched) == 1, (name, matched)


@needs_fmnist
def test_the_first_vision_sweep_still_loads():
    assert len(load_sweep(ROOT / "configs" / "fmnist_sweep.yaml")) == 9 * 3


RUN_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if "runs" not in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_every_committed_run_config_validates(name):
    """The examples a user copies are valid configs (their data paths are placeholders: no pre-flight)."""
    from padnet.train import load_config

    config = load_config(ROOT / "configs" / name, preflight=False)
    assert config.task in ("image_classification", "text_classification", "glue")


def test_the_text_example_names_integer_labels():
    from padnet.text.classification import TextClassificationConfig
    from padnet.train import load_config

    config = load_config(ROOT / "configs" / "text_classification_example.yaml", preflight=False)
    section = config.section("text_classification", TextClassificationConfig)
    assert section.labels == ["negative", "positive"] and section.label_column == "sentiment"
