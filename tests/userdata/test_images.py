"""Your own images end to end: configurable transforms for an ImageFolder tree and a CSV of path,label,
the preprocessing recorded in the exported file, and ``padnet predict`` agreeing with the run's evaluation."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("torchvision")
from PIL import Image

import padnet
from padnet import cli
from padnet.data import DataConfig, build_datasets
from padnet.data.transforms import eval_transform, image_record, train_transform
from padnet.errors import ConfigError
from padnet.serialization import read_record
from padnet.train.config import config_from_dict

# End-to-end runs: the slow lane (make test-fast leaves them out).
pytestmark = pytest.mark.slow

CLASSES = ("left", "right")


def _image(label: int, rng) -> Image.Image:
    """12x12 greyscale: the bright half is the class (a horizontal flip would swap the classes)."""
    pixels = rng.integers(0, 60, size=(12, 12)).astype(np.uint8)
    half = slice(0, 6) if label == 0 else slice(6, 12)
    pixels[:, half] += 150
    return Image.fromarray(pixels, mode="L")


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 8)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                _image(label, rng).save(root / split / name / f"{i}.png")
    return root


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def _run_config(tmp_path, data: dict, name="run") -> str:
    config = {"task": "image_classification", "run_dir": str(tmp_path / name), "seed": 0, "epochs": 3,
              "batch_size": 8, "eval_batch_size": 8, "progress": False, "tensorboard": False, "threads": 1,
              "data": data, "model": {"name": "small_resnet", "width": 4, "layers": [1]},
              "optim": {"lr": 0.05}, "dynamic": {"mode": "pad", "num_kernels": 2, "dynamic_ratio": 0.5},
              "partition": {"scoring_batches": 1, "rounds": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_transforms_channels_size_and_normalisation(image_tree):
    image = Image.open(next((image_tree / "train" / "left").glob("*.png"))).convert("RGB")
    grey = image_record(1, 8, [0.5], [0.25])
    x = eval_transform(grey)(image)
    assert x.shape == (1, 8, 8)
    rgb = eval_transform(image_record(3, 8, [0.5] * 3, [0.25] * 3))(image)
    assert rgb.shape == (3, 8, 8) and torch.allclose(rgb[0], x[0], atol=0.02)  # a grey image: R = G = B = grey
    assert torch.equal(train_transform(grey, "none")(image), x)  # none: exactly the eval transform
    flipped = train_transform(grey, "flip")
    torch.manual_seed(0)
    outs = {bool(torch.equal(flipped(image), x)) for _ in range(20)}
    assert outs == {True, False}  # flips some of the time, never changes anything else
    torch.manual_seed(0)
    assert train_transform(grey, "randaugment")(image).shape == (1, 8, 8)


def test_dataset_normalisation_is_computed_from_the_training_images(image_tree):
    config = DataConfig(name="imagefolder", root=str(image_tree), image_size=12, channels=1, augment="none",
                        normalize="dataset")
    train, test, info = build_datasets(config)
    images = torch.stack([train[i][0] for i in range(len(train))])
    assert images.shape[1:] == (1, 12, 12)
    assert abs(float(images.mean())) < 1e-5 and abs(float(images.std(unbiased=False)) - 1) < 1e-4
    assert info.label_names == list(CLASSES) and info.in_channels == 1
    assert info.preprocessing["channels"] == 1 and info.preprocessing["mean"] != [0.449]


def test_transform_keys_are_checked():
    def problems(**kw):
        with pytest.raises(ConfigError) as err:
            config_from_dict({"data": {"name": "imagefolder", "root": "/nowhere"} | kw}, preflight=False)
        return str(err.value)

    assert "data.augment='mirror' is not supported for data.name='imagefolder'; allowed: none, flip, crop_flip, " \
           "randaugment" in problems(augment="mirror")
    assert "data.channels=2 is not supported; allowed: 1, 3" in problems(channels=2)
    assert "data.normalize=given needs data.mean and data.std, 3 number(s) each" in problems(normalize="given",
                                                                                            mean=[0.5])
    assert "data.mean/data.std are set but data.normalize='imagenet'" in problems(mean=[0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="data.augment='randaugment' is not supported for data.name='fashion_mnist'"):
        config_from_dict({"data": {"name": "fashion_mnist", "augment": "randaugment"}}, preflight=False)
    with pytest.raises(ConfigError, match="data.channels applies to image files only"):
        config_from_dict({"data": {"name": "digits", "channels": 1}}, preflight=False)


def _accuracy(results, truth):
    return sum(r["label"] == t for r, t in zip(results, truth)) / len(truth)


def test_folder_to_predict_matches_the_run(image_tree, tmp_path, capsys):
    data = {"name": "imagefolder", "root": str(image_tree), "image_size": 12, "channels": 1, "augment": "none",
            "normalize": "dataset"}
    assert cli.main(["train", "--config", _run_config(tmp_path, data)]) == 0
    run = tmp_path / "run"
    trained = json.loads((run / "results.json").read_text())
    assert trained["info"]["label_names"] == list(CLASSES)
    assert cli.main(["export", "--run", str(run)]) == 0
    model_file = run / "model.safetensors"
    record = read_record(model_file)["predict"]
    assert record["label_names"] == list(CLASSES) and record["input"] == trained["info"]["preprocessing"]
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(model_file), str(image_tree / "val"), "--json", "--quiet"]) == 0
    results = json.loads(capsys.readouterr().out)
    truth = [r["input"].split("/")[-2] for r in results]
    assert len(results) == 16 and _accuracy(results, truth) == trained["test"]["accuracy"]
    # The same from Python, from the file or from the loaded model, and as CSV.
    assert padnet.predict(model_file, [image_tree / "val"]) == results
    again = padnet.predict(padnet.load(model_file), [image_tree / "val"], batch_size=3)
    assert [r["label"] for r in again] == [r["label"] for r in results]
    # Batches of 3, not 32: the convolutions may block the batch another way, so a float32 probability can
    # differ in its last bits (one ulp, 6e-8, measured); 1e-5 bounds rounding through the few layers with margin.
    assert [r["probability"] for r in again] == pytest.approx([r["probability"] for r in results], abs=1e-5)
    assert cli.main(["predict", "--model", str(model_file), results[0]["input"], "--csv", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (lines[0] == "input,label,probability"
            and lines[1].startswith(f"{results[0]['input']},{results[0]['label']},"))


def test_csv_of_paths_and_string_labels(image_tree, tmp_path, capsys):
    rows = {split: [(str(p.relative_to(image_tree)), p.parent.name.upper())
                    for p in sorted((image_tree / split).rglob("*.png"))] for split in ("train", "val")}
    train = _write_csv(image_tree / "train.csv", rows["train"])
    val = _write_csv(image_tree / "val.csv", rows["val"])
    data = {"name": "image_csv", "train_file": str(train), "eval_file": str(val), "image_size": 12,
            "augment": "none", "normalize": "given", "mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}
    assert cli.main(["train", "--config", _run_config(tmp_path, data, "csvrun")]) == 0
    trained = json.loads((tmp_path / "csvrun" / "results.json").read_text())
    assert trained["info"]["label_names"] == ["LEFT", "RIGHT"]
    assert cli.main(["export", "--run", str(tmp_path / "csvrun")]) == 0
    results = padnet.predict(tmp_path / "csvrun" / "model.safetensors", [image_tree / r[0] for r in rows["val"]])
    assert _accuracy(results, [r[1] for r in rows["val"]]) == trained["test"]["accuracy"]
    # An unknown label in the evaluation file, a missing column, an empty file: one line naming the file.
    _write_csv(image_tree / "bad.csv", rows["val"][:1] + [(rows["val"][1][0], "UP")])  # beside the images
    (image_tree / "nolabel.csv").write_text("path,klass\na.png,LEFT\n")
    (image_tree / "empty.csv").write_text("")
    for bad, message in (("bad.csv", "bad.csv:3: label 'UP' is not one of the training labels ('LEFT', 'RIGHT')"),
                         ("nolabel.csv", "nolabel.csv:1: no column 'label'"),
                         ("empty.csv", "empty.csv:1: no column 'path'; the header has nothing (empty file)")):
        capsys.readouterr()
        code = cli.main(["train", "--config", _run_config(tmp_path, data | {"eval_file": str(image_tree / bad)}, "b")])
        err = capsys.readouterr().err
        # Found by the pre-flight check, so listed under the config's one-line heading; no run directory.
        lines = err.strip().splitlines()
        assert code == 2 and message in err and len(lines) == 2 and "invalid config: 1 problem" in lines[0], err
        assert not (tmp_path / "b").exists()


def test_predict_errors_are_one_line(image_tree, tmp_path, capsys):
    assert cli.main(["predict", "--model", str(tmp_path / "missing.safetensors"), "x.png"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    model = torch.nn.Linear(2, 2)
    padnet.save(model, tmp_path / "plain.safetensors", arch={"name": "torchvision.resnet18", "kwargs": {}})
    with pytest.raises(padnet.ModelFileError, match="records nothing about its inputs"):
        padnet.predict(model, ["x.png"])
