"""Image preprocessing for image files (ImageFolder trees, CSVs of path,label, and ``padnet predict``).

Everything prediction needs is one JSON-able mapping, the *preprocessing record*::

    {"kind": "image", "channels": 1 or 3, "image_size": 224, "resize": 256, "mean": [...], "std": [...]}

Evaluation (and prediction) resizes the shorter side to ``resize``, center-crops ``image_size``, converts
to ``channels`` (greyscale or RGB) and normalises with ``mean``/``std``. Training adds the augmentation
preset of ``data.augment`` (``AUGMENT``). ``padnet export`` writes the record into the model file, so
``padnet predict`` / ``padnet.predict`` apply exactly the transform the run evaluated with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch

from ..errors import UsageError, shorten

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# none: the eval transform; flip: + random horizontal flip (not for digits or text in images: it mirrors
# them); crop_flip: torchvision's ImageNet recipe, RandomResizedCrop (scale 0.08-1) + flip; randaugment:
# RandAugment (torchvision defaults) before the eval resize and crop, no flip.
AUGMENT = ("none", "flip", "crop_flip", "randaugment")
Normalize = Literal["imagenet", "dataset", "given", "none"]
NORMALIZE = get_args(Normalize)


def resize_for(image_size: int) -> int:
    """The shorter side images are resized to before the center crop (the ImageNet ratio 256/224)."""
    return int(round(image_size * 256 / 224))


def image_record(channels: int, image_size: int, mean, std, resize: int | None = None) -> dict:
    """The preprocessing record (see the module docstring); ``resize`` defaults to ``resize_for(image_size)``."""
    return {"kind": "image", "channels": int(channels), "image_size": int(image_size),
            "resize": int(resize or resize_for(image_size)), "mean": [float(m) for m in mean],
            "std": [float(s) for s in std]}


# What each augmentation preset does, in words (the run log and `padnet sweep --dry-run` say it).
AUGMENT_WORDS = {
    "none": "no augmentation",
    "flip": "random horizontal flip",
    "crop_flip": "random resized crop (scale 0.08-1) and random horizontal flip",
    "randaugment": "RandAugment, then the evaluation resize and crop",
}


def describe(record: dict, augment: str | None = None, normalisation: str | None = None) -> str:
    """A preprocessing record (and the training augmentation) in one line of words; ``normalisation``
    says in words what the record's mean/std will be when they are not computed yet."""
    size, resize = record["image_size"], record["resize"]
    geometry = (f"resize the shorter side to {resize}, center-crop {size}x{size}" if resize != size else
                f"resize the shorter side to {size}, center-crop {size}x{size} (images of {size}x{size} pass "
                "unchanged)")
    colour = "greyscale" if record["channels"] == 1 else "RGB"
    mean, std = [round(m, 4) for m in record["mean"]], [round(s, 4) for s in record["std"]]
    norm = normalisation or (f"normalise with mean {mean}, std {std}" if mean else "no normalisation")
    train = f"; training adds: {AUGMENT_WORDS[augment]}" if augment is not None else ""
    return f"{colour}, {geometry}, {norm}{train}"


def imagenet_stats(channels: int) -> tuple[list[float], list[float]]:
    """ImageNet's mean/std; for greyscale, their averages (what a grey conversion of ImageNet gives, near enough)."""
    if channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]


def _channels(channels: int):
    from torchvision import transforms

    # load_image always gives RGB; greyscale is converted here, so the record says what the model sees.
    return [transforms.Grayscale(1)] if channels == 1 else []


def _to_tensor(record: dict) -> list:
    from torchvision import transforms

    out = [transforms.ToTensor()]
    if record["mean"]:
        out.append(transforms.Normalize(record["mean"], record["std"]))
    return out


class EvalTransform:
    """The deterministic transform of a preprocessing record, PIL image -> normalised float tensor
    (C, H, W): torchvision's ``Grayscale(1)`` (greyscale records), ``Resize(resize)``, ``CenterCrop(image_size)``,
    ``ToTensor`` and ``Normalize`` step for step, with the same PIL calls and rounding (a test compares
    them pixel for pixel), in PIL and torch alone, so that prediction from a model file needs neither
    torchvision nor its import (which brings torch._dynamo in through torchvision.ops: about 2.5 s of CPU
    here)."""

    def __init__(self, record: dict):
        from PIL import Image  # imported once here, not for every image

        self._bilinear = Image.Resampling.BILINEAR  # == Image.BILINEAR, which Pillow sets dynamically, unseen by mypy
        check_record(record)
        self.record = record
        self.mean = torch.tensor(record["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(record["std"], dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image):
        record = self.record
        if record["channels"] == 1:
            image = image.convert("L")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        size = (record["resize"], int(record["resize"] * long / short))  # torchvision: (short, long), truncated
        size = size if width <= height else size[::-1]
        if size != (width, height):
            image = image.resize(size, self._bilinear)
        crop = record["image_size"]  # never larger than the resized image (record_problem: resize >= image_size)
        top, left = int(round((image.size[1] - crop) / 2.0)), int(round((image.size[0] - crop) / 2.0))
        image = image.crop((left, top, left + crop, top + crop))
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True)).view(crop, crop, -1)
        x = pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return x.sub(self.mean).div(self.std) if record["mean"] else x

    def __repr__(self) -> str:
        return f"EvalTransform({self.record})"


def eval_transform(record: dict) -> Callable:
    """The deterministic transform of a preprocessing record: PIL image -> normalised tensor (C, H, W)."""
    return EvalTransform(record)


def train_transform(record: dict, augment: str) -> Callable:
    """The training transform: ``augment`` (one of ``AUGMENT``) over the record's eval transform."""
    from torchvision import transforms

    if augment not in AUGMENT:
        raise UsageError(f"augment={augment!r} is not supported; allowed: {', '.join(AUGMENT)}")
    if augment == "none":
        return eval_transform(record)
    size = record["image_size"]
    geometry = [transforms.Resize(record["resize"]), transforms.CenterCrop(size)]
    steps = {
        "flip": geometry + [transforms.RandomHorizontalFlip()],
        "crop_flip": [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()],
        "randaugment": [transforms.RandAugment()] + geometry,
    }[augment]
    return transforms.Compose([*_channels(record["channels"]), *steps, *_to_tensor(record)])


MAX_STD = 1e6  # a std outside [1/MAX_STD, MAX_STD] turns every pixel into an overflow or into noise


def record_problem(record) -> str | None:
    """What is wrong with an image preprocessing record (naming the field), or None."""
    if not isinstance(record, dict) or record.get("kind") != "image":
        return "kind must be 'image'"
    if record.get("channels") not in (1, 3):
        return f"channels={shorten(record.get('channels'))} must be 1 or 3"
    for key in ("image_size", "resize"):
        value = record.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096):
            return f"{key}={shorten(value)} must be an integer from 1 to 4096"
    if record["resize"] < record["image_size"]:
        return f"resize={record['resize']} must be >= image_size={record['image_size']} (the center crop)"
    mean, std = record.get("mean"), record.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std)
            and len(std) in (0, record["channels"])):
        return (f"mean={shorten(mean)} and std={shorten(std)} must be two lists of one value per channel "
                f"({record['channels']}), or both empty")
    for key, values in (("mean", mean), ("std", std)):
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"{key}={shorten(values)} must hold finite numbers"
    if any(not 1 / MAX_STD <= s <= MAX_STD for s in std):
        return f"std={shorten(std)} must lie between {1 / MAX_STD:g} and {MAX_STD:g}"
    return None


def check_record(record) -> None:
    """``UsageError`` unless ``record`` is a well-formed image preprocessing record."""
    problem = record_problem(record)
    if problem:
        raise UsageError(f"malformed image preprocessing record: {problem}")


def predict_record_problem(predict) -> str | None:
    """What is wrong with a model file's ``predict`` record (naming the field), or None. The text
    record's tokenizer is checked where it is loaded (a name resolved locally, never a folder the file
    names); the label names' count is checked against the model's outputs when it first runs."""
    if not isinstance(predict, dict):
        return f"predict must be a mapping; got {type(predict).__name__}"
    spec = predict.get("input")
    if not isinstance(spec, dict) or spec.get("kind") not in ("image", "text"):
        return "predict.input must be a mapping whose kind is 'image' or 'text'"
    if spec["kind"] == "image":
        problem = record_problem(spec)
        if problem:
            return f"predict.input.{problem}"
    elif not isinstance(spec.get("tokenizer"), str):
        return f"predict.input.tokenizer={shorten(spec.get('tokenizer'))} must be a tokenizer name"
    problem_kind = predict.get("problem", "classification")
    if problem_kind not in ("classification", "regression"):
        return f"predict.problem={shorten(problem_kind)} must be 'classification' or 'regression'"
    names = predict.get("label_names")
    if names is not None and not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
                                  and len(set(names)) == len(names)):
        return f"predict.label_names={shorten(names)} must be a non-empty list of distinct strings"
    return None


def dataset_stats(dataset, channels: int, batch_size: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a dataset's (unnormalised) images, in one pass."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    total = torch.zeros(channels, dtype=torch.float64)
    square = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for images, _ in loader:
        flat = images.to(torch.float64).transpose(0, 1).reshape(channels, -1)
        total += flat.sum(1)
        square += (flat * flat).sum(1)
        count += flat.shape[1]
    mean = total / count
    std = (square / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
