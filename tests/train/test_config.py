"""Config validation: every problem at once, each naming the key, the value and what is allowed."""

import dataclasses

import pytest
import yaml

from padnet.data import DataConfig
from padnet.errors import ConfigError
from padnet.layers import ConvertOptions
from padnet.layers.settings import convert_options
from padnet.train import config_from_dict, load_config
from padnet.train.sweep import load_sweep
from padnet.train.vision import ModelConfig


def problems_of(raw, overrides=None):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, overrides)
    return err.value.problems, str(err.value)


def test_valid_config_and_overrides():
    config = config_from_dict({"data": {"name": "digits"}},
                              ["optim.lr=0.02", "dynamic.mode=pad", "model.layers=[2, 1]"])
    assert config.optim.lr == 0.02 and config.dynamic.mode == "pad"
    assert config.section("model", ModelConfig).layers == [2, 1]
    assert config.section("data", DataConfig).name == "digits"  # task sections, typed
    assert config_from_dict(config.to_dict()).to_dict() == config.to_dict()  # the written YAML round-trips


def test_all_problems_reported_at_once():
    problems, text = problems_of({
        "bogus": 1,
        "epochs": "three",
        "optim": {"lr": -0.1, "name": "adam"},
        "dynamic": {"dynamic_ratio": 1.5, "top_k": 9, "num_experts": 8, "temperature_start": 0},
        "data": {"name": "digits", "train_subset": 0},
        "model": {"widht": 8},
    })
    expected = [
        "unknown key 'bogus'",
        "epochs='three' must be a valid integer",
        "optim.lr=-0.1 must be greater than 0",
        "optim.name='adam' is not supported; allowed: 'sgd', 'adamw'",
        "dynamic.dynamic_ratio=1.5 must be less than or equal to 1",
        "dynamic.top_k=9 must be <= num_experts=8",
        "dynamic.temperature_start=0 must be greater than 0",
        "data.train_subset=0 must be greater than or equal to 1",
        "unknown key 'model.widht'",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert len(problems) == len(expected)
    assert text.startswith(f"{len(expected)} problems")


def test_unknown_key_lists_allowed_keys_and_wrong_types():
    problems, _ = problems_of({"data": {"name": "digits"}, "optim": {"momentom": 0.9}, "seed": 1.5, "progress": "yes"})
    assert any("unknown key 'optim.momentom' (did you mean momentum?); allowed keys in optim: name, lr, momentum"
               in p for p in problems)
    assert "seed=1.5 must be a valid integer" in problems
    assert "progress='yes' must be a valid boolean" in problems


def test_bad_set_syntax_and_unknown_task():
    problems, _ = problems_of({"data": {"name": "digits"}}, ["optim.lr"])
    assert any("--set 'optim.lr' must look like key=value" in p for p in problems)
    problems, _ = problems_of({"task": "speech"})
    assert any("task='speech' is not supported; known tasks:" in p and "image_classification" in p for p in problems)


def test_missing_data_dir_says_how_to_get_the_data(tmp_path):
    problems, _ = problems_of({"data": {"name": "fashion_mnist", "root": str(tmp_path / "missing")}})
    assert len(problems) == 1
    assert f"data.root='{tmp_path / 'missing'}'" in problems[0]
    assert "apt-get install -y dataset-fashion-mnist" in problems[0]
    problems, _ = problems_of({"data": {"name": "imagefolder", "root": str(tmp_path)}})
    assert "missing train, val/" in problems[0]


def test_load_config_errors_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="c.yaml is not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_sweep_validates_every_run_before_starting(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"name": "digits"}, "epochs": 1}))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": "base.yaml", "output_dir": str(tmp_path / "out"), "seeds": [0, 1],
        "runs": [{"name": "static", "set": {"dynamic.mode": "static"}},
                 {"name": "pad", "set": {"dynamic.mode": "pad", "dynamic.dynamic_ratio": 0.3}}],
    }))
    configs = load_sweep(sweep)
    assert [(c.name, c.seed) for c in configs] == [("static", 0), ("pad", 0), ("static", 1), ("pad", 1)]
    assert configs[1].run_dir == str(tmp_path / "out" / "pad" / "seed0")
    sweep.write_text(yaml.safe_dump({
        "base": "base.yaml", "seeds": [0], "extra": 1, "seed": 0,
        "runs": [{"name": "bad", "set": {"dynamic.dynamic_ratio": 2}}, {"name": "bad2", "set": {"optim.lr": 0}}],
    }))
    with pytest.raises(ConfigError) as err:
        load_sweep(sweep)
    text = str(err.value)
    assert "unknown sweep key 'extra'; allowed: base, output_dir, seeds, runs" in text
    assert "unknown sweep key 'seed' (did you mean seeds?); allowed" in text
    assert "runs[0] (bad, seed 0): dynamic.dynamic_ratio=2 must be less than or equal to 1" in text
    assert "runs[1] (bad2, seed 0): optim.lr=0 must be greater than 0" in text


def test_a_run_config_given_as_a_sweep_and_the_reverse_say_which_command_reads_them(tmp_path):
    """One line naming the right command, instead of every key of one kind called unknown to the other."""
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"data": {"name": "digits"}, "epochs": 1, "optim": {"lr": 0.1}}))
    with pytest.raises(ConfigError) as err:
        load_sweep(run)
    assert err.value.problems == [f"this is a run config, not a sweep (no base: or runs:); train it with padnet "
                                  f"train --config {run}, or make it the base: of a sweep"]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "run.yaml", "runs": [{"name": "a", "set": {"seed": 1}}]}))
    with pytest.raises(ConfigError) as err:
        load_config(sweep)
    assert err.value.problems == [f"this is a sweep config (it has runs:), not a run config; run it with "
                                  f"padnet sweep --config {sweep}"]


def test_every_convert_option_is_reachable_from_yaml(tmp_path):
    """Every padnet.convert setting (aux_loss_coef, noisy_gating, include, exclude, ...) reaches convert from a
    run config."""
    from padnet.models import build
    from padnet.train.checkpoint import make_dynamic

    path = tmp_path / "run.yaml"
    path.write_text("dynamic:\n  mode: dynamic\n  include: ['layer1.*']\n  exclude: ['*.conv2']\n"
                    "  aux_loss_coef: 0.05\n  noisy_gating: false\n")
    config = load_config(path, preflight=False)
    assert config.dynamic.include == ["layer1.*"] and config.dynamic.exclude == ["*.conv2"]
    model = make_dynamic(build("small_resnet", 3, 1, True, width=4, layers=[1]), config)
    converted = model.padnet_config["converted"]
    assert converted and all(n.startswith("layer1.") and not n.endswith(".conv2") for n in converted)
    assert model.padnet_config["aux_loss_coef"] == 0.05 and model.padnet_config["noisy_gating"] is False
    # Every setting padnet.convert has is a key of the dynamic section, and reaches convert as it is.
    keys = {f.name for f in dataclasses.fields(ConvertOptions)}
    assert keys <= set(config.to_dict()["dynamic"])
    assert {k: model.padnet_config[k] for k in keys} == convert_options(config.dynamic)
    assert model.padnet_config["dynamic"] == "conv" and model.padnet_config["pad"] is False
    with pytest.raises(ValueError, match=r"dynamic.aux_loss_coef=-1.0 must be greater than or equal to 0"):
        config_from_dict({"dynamic": {"aux_loss_coef": -1.0}})
    with pytest.raises(ValueError, match=r"dynamic.granularity='row' is not supported; allowed: 'element', 'channel'"):
        config_from_dict({"dynamic": {"granularity": "row"}})


def test_task_sections_are_typed():
    config = config_from_dict({"data": {"name": "digits"}})
    with pytest.raises(KeyError,
                       match="task 'image_classification' has no config section 'glue'; its sections: data, model"):
        config.section("glue", DataConfig)
    with pytest.raises(TypeError, match="config section 'model' holds a ModelConfig; expected a DataConfig"):
        config.section("model", DataConfig)
    with pytest.raises(AttributeError):
        config.data  # noqa: B018  (sections are not attributes: a typo cannot read as a section)


def test_mode_static_converts_nothing_and_the_others_convert_as_configured():
    static = config_from_dict({"data": {"name": "digits"}})
    assert static.dynamic.convert_config() is None
    pad = config_from_dict({"data": {"name": "digits"}, "dynamic": {"mode": "pad", "kind": "moe", "num_experts": 4}})
    settings = pad.dynamic.convert_config()
    assert (settings.dynamic, settings.pad, settings.num_experts) == ("moe", True, 4)
