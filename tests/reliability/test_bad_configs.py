"""Bad configs: every class of mistake is reported before any work starts, naming the key, the value and
what is allowed, and all problems of one file come back together."""

import pytest
import yaml

from padnet.cli import main
from padnet.errors import ConfigError
from padnet.train import config_from_dict, load_config

OK = {"data": {"name": "digits"}}

# (overrides, a fragment the problem must contain: the key, the value and what is allowed)
BAD = {
    # unknown keys, at the top, in a trainer section and in a task section
    "unknown-top": (["bogus=1"], "unknown key 'bogus'; allowed keys: task, name, run_dir"),
    "unknown-optim": (["optim.learning_rate=0.1"],
                      "unknown key 'optim.learning_rate'; allowed keys in optim: name, lr,"),
    "unknown-model": (["model.widht=8"],
                      "unknown key 'model.widht' (did you mean width?); allowed keys in model: name, width, layers"),
    # wrong types
    "int-as-str": (["epochs=three"], "epochs='three' must be a valid integer"),
    "int-as-float": (["batch_size=16.5"], "batch_size=16.5 must be a valid integer"),
    "bool-as-str": (["progress=yes please"], "progress='yes please' must be a valid boolean"),
    "float-as-str": (["optim.lr=fast"], "optim.lr='fast' must be a valid number"),
    "list-as-scalar": (["model.layers=3"], "model.layers=3 must be a valid list"),
    "section-as-scalar": (["dynamic=5"], "dynamic=5 must be a valid dictionary"),
    "set-syntax": (["optim.lr"], "--set 'optim.lr' must look like key=value"),
    # out of range
    "kappa-above-1": (["dynamic.dynamic_ratio=1.5"], "dynamic.dynamic_ratio=1.5 must be less than or equal to 1"),
    "kappa-zero": (["dynamic.dynamic_ratio=0"], "dynamic.dynamic_ratio=0 must be greater than 0"),
    "kappa-negative": (["dynamic.dynamic_ratio=-0.2"], "dynamic.dynamic_ratio=-0.2 must be greater than 0"),
    "lr-negative": (["optim.lr=-0.1"], "optim.lr=-0.1 must be greater than 0"),
    "lr-zero": (["optim.lr=0"], "optim.lr=0 must be greater than 0"),
    "lr-inf": (["optim.lr=.inf"], "optim.lr=inf must be a finite number"),
    "lr-nan": (["optim.lr=.nan"], "optim.lr=nan must be a finite number"),
    "top-k-above-experts": (["dynamic.top_k=5", "dynamic.num_experts=4"],
                            "dynamic.top_k=5 must be <= num_experts=4"),
    "temperature-zero": (["dynamic.temperature_start=0"], "dynamic.temperature_start=0 must be greater than 0"),
    "temperature-negative": (["dynamic.temperature_end=-1"], "dynamic.temperature_end=-1 must be greater than 0"),
    "temperature-inf": (["dynamic.temperature_start=.inf"], "dynamic.temperature_start=inf must be a finite number"),
    "momentum-1": (["optim.momentum=1"], "optim.momentum=1 must be less than 1"),
    "betas-one": (["optim.betas=[0.9]"], "optim.betas=[0.9] must have at least 2 items, not 1"),
    "epochs-zero": (["epochs=0"], "epochs=0 must be greater than or equal to 1"),
    "num-kernels-zero": (["dynamic.num_kernels=0"], "dynamic.num_kernels=0 must be greater than or equal to 1"),
    "seed-negative": (["seed=-1"], "seed=-1 must be greater than or equal to 0"),
    "kind": (["dynamic.kind=lstm"], "dynamic.kind='lstm' is not supported; allowed: 'conv', 'moe'"),
    "upcycle-sigmoid": (["dynamic.mode=dynamic", "dynamic.init=upcycle", "dynamic.routing=sigmoid"],
                        "dynamic.init='upcycle' keeps the model's function only with dynamic.routing='softmax'"),
    "target": (["dynamic.target=input"],
               "dynamic.target='input' is not supported; allowed: one of 'output', 'down', 'gate', 'up'"),
    "choice": (["dynamic.mode=partial"],
               "dynamic.mode='partial' is not supported; allowed: 'static', 'dynamic', 'pad'"),
    "scorer": (["partition.scorer=fisher"], "partition.scorer='fisher' is not supported; allowed: 'taylor'"),
    "device": (["device=tpu"], "device='tpu' is not supported; allowed: 'cpu', 'cuda', 'auto'"),
    "dataset": (["data.name=cifar"],
                "data.name='cifar' is not supported; allowed: 'fashion_mnist', 'imagefolder', 'image_csv', 'digits'"),
    "model-layers": (["model.layers=[0]"], "model.layers[0]=0 must be greater than or equal to 1"),
    "model-layers-empty": (["model.layers=[]"], "model.layers=[] must have at least 1 item, not 0"),
    "model-layers-deep": (["model.layers=[1,1,1,1,1,1,1,1,1]"], "must have at most 8 items, not 9"),
    "task": (["task=speech"], "task='speech' is not supported; known tasks:"),
    # pre-flight: the data must be there
    "data-missing": (["data.name=fashion_mnist", "data.root=/nonexistent/fmnist"],
                     "data.root='/nonexistent/fmnist': Fashion-MNIST not found; looked in: /nonexistent/fmnist"),
    "imagefolder-no-root": (["data.name=imagefolder"], "the imagefolder dataset needs data.root=DIR"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_value_is_named_with_what_is_allowed(case):
    overrides, fragment = BAD[case]
    with pytest.raises(ConfigError) as err:
        config_from_dict(OK, overrides)
    assert any(fragment in p for p in err.value.problems), (fragment, err.value.problems)


def test_all_problems_of_one_file_come_back_together(tmp_path, capsys):
    """One file with a problem of every class; the CLI prints them all and creates nothing."""
    raw = {
        "run_dir": str(tmp_path / "run"),
        "bogus": 1,  # unknown key
        "epochs": "three",  # wrong type
        "data": {"name": "digits", "train_subset": 0},  # out of range (task section)
        "optim": {"lr": -0.1, "momentum": 1.5},  # out of range x2
        "dynamic": {"dynamic_ratio": 0, "top_k": 9, "num_experts": 8, "temperature_start": 0},  # x3
        "model": {"widht": 8},  # unknown key in a task section
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert len(problems) == 9, problems
    assert str(err.value).startswith(f"9 problems in {path}:")
    assert main(["train", "--config", str(path)]) == 2
    printed = capsys.readouterr().err
    assert all(p in printed for p in problems)
    assert not (tmp_path / "run").exists()  # validation happens before any work


def test_problems_from_the_file_and_from_set_are_merged(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "digits"}, "optim": {"lr": -1}}))
    with pytest.raises(ConfigError) as err:
        load_config(path, ["dynamic.dynamic_ratio=2", "epochs=0"])
    assert len(err.value.problems) == 3


@pytest.mark.parametrize("text, fragment", [
    ("optim: {lr: [unclosed", "is not valid YAML"),
    ("- a list\n- not a mapping\n", "must hold a mapping of keys to values; got list"),
])
def test_unreadable_config_files_are_named(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'nope.yaml'} does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_exponent_floats_are_numbers_not_strings():
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; the config's YAML 1.2 reads the number it is."""
    config = config_from_dict(OK, ["optim.lr=1e-3", "optim.weight_decay=5E-4"])
    assert config.optim.lr == 0.001 and config.optim.weight_decay == 0.0005
    with pytest.raises(ConfigError, match=r"optim.lr='2.5e-2' must be a valid number"):  # a string stays one
        config_from_dict({**OK, "optim": {"lr": "2.5e-2"}})


def test_unknown_task_does_not_also_call_its_sections_unknown():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"task": "speech", "speech": {"rate": 16000}, "bogus": 1})
    assert len(err.value.problems) == 2, err.value.problems  # the task, and 'bogus'
    assert not any("'speech'" in p and "unknown key" in p for p in err.value.problems)
