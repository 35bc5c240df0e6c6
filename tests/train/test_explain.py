"""Every run-config key is documented from the schema: ``padnet config --explain`` and docs/config.md."""

from pathlib import Path

import pytest

from padnet.cli import main
from padnet.errors import UsageError
from padnet.train.explain import config_keys, explain, markdown
from padnet.train.tasks import TASK_MODULES

PAGE = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_every_key_has_a_sentence_and_the_page_is_current():
    keys = config_keys(sorted(TASK_MODULES))  # padnet's own tasks, not those other tests registered
    assert [k.key for k in keys if not k.doc] == []
    assert {"optim.lr", "dynamic.granularity", "data.resize", "text_classification.labels", "glue.data_dir"} <= {
        k.key for k in keys}
    assert PAGE.read_text() == markdown(keys) + "\n", "regenerate: python -m padnet config --explain --markdown"


def test_explain_states_type_default_and_what_is_allowed(capsys):
    assert main(["config", "--explain", "optim.lr"]) == 0
    assert capsys.readouterr().out.strip() == ("optim.lr (float, default 0.1; > 0): base learning rate (after the "
                                               "warm-up)")
    assert main(["config", "--explain", "partition"]) == 0
    out = capsys.readouterr().out
    assert "partition.scorer (str, default 'taylor'; one of 'taylor', 'magnitude', 'random')" in out
    assert all(line.startswith("partition.") for line in out.strip().splitlines())
    [mode] = explain("dynamic.mode")
    assert mode.allowed == "one of 'static', 'dynamic', 'pad'" and mode.default == "static"


def test_optional_keys_and_lists_state_their_bounds():
    """A bound inside ``X | None`` (``Annotated[int, Field(ge=1)] | None``) and a list's item bounds."""
    assert [k.allowed for k in explain("optim.grad_clip")] == ["> 0"]
    assert [k.allowed for k in explain("threads")] == [">= 1, <= 1024"]
    assert [k.allowed for k in explain("optim.betas")] == ["length 2, each >= 0, < 1"]


def test_the_convert_settings_state_their_choices():
    """They are declared once, in padnet.layers (ConvertOptions), which padnet.convert is checked against too."""
    assert [k.allowed for k in explain("dynamic.routing")] == ["one of 'softmax', 'sigmoid'"]
    assert [k.allowed for k in explain("dynamic.granularity")] == ["one of 'element', 'channel'"]


def test_an_unknown_key_is_one_line_with_a_suggestion(capsys):
    assert main(["config", "--explain", "optim.learning_rate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config key 'optim.learning_rate'" in err


@pytest.mark.parametrize("typo, meant", [("optim.lrr", "optim.lr"), ("dynamic.num_kernel", "dynamic.num_kernels"),
                                         ("lr", "optim.lr")])
def test_a_typo_gets_the_key_it_is_close_to(typo, meant):
    with pytest.raises(UsageError, match=rf"no config key '{typo}'; did you mean {meant}\?$"):
        explain(typo)


@pytest.mark.parametrize("key", ["data.augment", "text_classification.labels"])
def test_task_sections_name_their_task(key):
    [doc] = explain(key)
    assert doc.task in ("image_classification", "text_classification") and doc.doc
