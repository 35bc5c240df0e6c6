"""Image preprocessing says what it does: no resize-and-crop of images already the crop size, no flip for
data marked orientation-sensitive, and the effective steps in the run log and in ``sweep --dry-run``."""

import numpy as np
import pytest
import yaml

pytest.importorskip("torchvision")
from PIL import Image

from padnet import cli
from padnet.data import DataConfig, build_datasets, preprocessing_words
from padnet.data.transforms import resize_for
from padnet.errors import ConfigError
from padnet.train.config import config_from_dict


def _tree(root, size=(12, 12)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, size=size[::-1]).astype(np.uint8), mode="L").save(
                    root / split / label / f"{i}.png")
    return root


def _data(root, **kwargs):
    return DataConfig(name="imagefolder", root=str(root), channels=1, normalize="none", augment="none", **kwargs)


def test_images_already_the_crop_size_are_not_resized_and_cropped(tmp_path):
    root = _tree(tmp_path / "images")
    train, test, info = build_datasets(_data(root, image_size=12))
    assert info.preprocessing["resize"] == 12
    # The evaluation transform is then the identity on the pixels (up to ToTensor's scaling).
    image = Image.open(test.samples[0][0])
    assert np.array_equal(test[0][0][0].numpy(), np.asarray(image, dtype=np.float32) / 255)
    # Another crop size: the ImageNet ratio, as before; an explicit resize wins over both.
    assert build_datasets(_data(root, image_size=10))[2].preprocessing["resize"] == resize_for(10) == 11
    assert build_datasets(_data(root, image_size=12, resize=16))[2].preprocessing["resize"] == 16


def test_non_square_images_keep_the_imagenet_ratio(tmp_path):
    root = _tree(tmp_path / "images", size=(16, 12))
    assert build_datasets(_data(root, image_size=12))[2].preprocessing["resize"] == resize_for(12)


def test_orientation_sensitive_data_gets_no_flip(tmp_path):
    assert DataConfig(name="imagefolder", root="x").augment_preset() == "crop_flip"
    assert DataConfig(name="imagefolder", root="x", orientation_sensitive=True).augment_preset() == "none"
    problems = DataConfig(name="imagefolder", root="x", orientation_sensitive=True, augment="crop_flip").problems()
    assert any("data.augment='crop_flip' flips images horizontally, but data.orientation_sensitive=true" in p
               for p in problems)
    assert not DataConfig(name="imagefolder", root="x", orientation_sensitive=True, augment="randaugment").problems()
    with pytest.raises(ConfigError, match="data.resize=8 must be an integer from data.image_size=12"):
        config_from_dict({"data": {"name": "imagefolder", "root": str(tmp_path), "image_size": 12, "resize": 8}},
                         preflight=False)


def test_the_run_log_and_the_sweep_dry_run_say_what_is_done(tmp_path, capsys):
    root = _tree(tmp_path / "images")
    words = preprocessing_words(_data(root, image_size=12))
    assert words == ("greyscale, resize the shorter side to 12, center-crop 12x12 (images of 12x12 pass unchanged), "
                     "no normalisation; training adds: no augmentation")
    base = {"task": "image_classification", "seed": 0, "epochs": 1, "batch_size": 4, "eval_batch_size": 4,
            "progress": False, "tensorboard": False, "threads": 1,
            "data": {"name": "imagefolder", "root": str(root), "image_size": 12, "channels": 1,
                     "orientation_sensitive": True, "normalize": "dataset"},
            "model": {"name": "small_resnet", "width": 4, "layers": [1]}, "dynamic": {"mode": "static"}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "output_dir": str(tmp_path / "out"), "seeds": [0],
                                     "runs": [{"name": "s"}]}))
    assert cli.main(["sweep", "--config", str(sweep), "--dry-run"]) == 0
    assert ("preprocessing (s): greyscale, resize the shorter side to 12, center-crop 12x12 (images of 12x12 pass "
            "unchanged), normalise with the training set's mean/std; training adds: no augmentation"
            in capsys.readouterr().out)
    assert cli.main(["sweep", "--config", str(sweep)]) == 0
    log = (tmp_path / "out" / "s" / "seed0" / "train.log").read_text()
    assert "preprocessing: greyscale, resize the shorter side to 12, center-crop 12x12" in log
    assert "normalise with mean [" in log and "training adds: no augmentation" in log


def test_image_data_is_checked_before_any_run_directory(tmp_path, capsys):
    root = _tree(tmp_path / "images")
    first = sorted((root / "train" / "a").iterdir())[0]
    first.write_bytes(b"not an image")
    config = {"task": "image_classification", "run_dir": str(tmp_path / "run"), "epochs": 1, "progress": False,
              "tensorboard": False, "data": {"name": "imagefolder", "root": str(root), "image_size": 12},
              "model": {"name": "small_resnet", "width": 4, "layers": [1]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"data.root: {first}" in err and not (tmp_path / "run").exists()
    # The evaluation split must have the training classes.
    first.unlink()
    (root / "val" / "b").rename(root / "val" / "c")
    assert cli.main(["train", "--config", str(path)]) == 2
    assert "differ from the training classes" in capsys.readouterr().err and not (tmp_path / "run").exists()
