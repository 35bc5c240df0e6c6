"""padnet's evaluation transform (PIL and torch only, so prediction does not import torchvision) is
torchvision's Grayscale/Resize/CenterCrop/ToTensor/Normalize pixel for pixel, and a small_resnet is built
without torchvision yet equals the torchvision-block version weight for weight."""

import numpy as np
import pytest
import torch

torchvision = pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

from padnet.data.transforms import eval_transform, image_record, resize_for  # noqa: E402


def _torchvision_eval(record):
    steps = [transforms.Grayscale(1)] if record["channels"] == 1 else []
    steps += [transforms.Resize(record["resize"]), transforms.CenterCrop(record["image_size"]), transforms.ToTensor()]
    if record["mean"]:
        steps.append(transforms.Normalize(record["mean"], record["std"]))
    return transforms.Compose(steps)


@pytest.mark.parametrize("size", [(32, 32), (40, 25), (25, 40), (17, 63), (12, 12), (224, 300)])
@pytest.mark.parametrize("channels,normalise", [(1, False), (1, True), (3, True), (3, False)])
def test_the_eval_transform_is_torchvisions(size, channels, normalise):
    rng = np.random.default_rng(sum(size) + channels)
    image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), mode="RGB")
    mean, std = ([0.3] * channels, [0.2] * channels) if normalise else ([], [])
    for crop in (12, 16):
        for resize in (crop, resize_for(crop), crop + 7):
            record = image_record(channels, crop, mean, std, resize)
            ours, theirs = eval_transform(record)(image), _torchvision_eval(record)(image)
            assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == theirs.shape == (channels, crop, crop)
            assert torch.equal(ours, theirs), (size, channels, crop, resize)


def test_small_resnet_equals_the_torchvision_block_version():
    from torchvision.models.resnet import BasicBlock as TorchvisionBlock

    from padnet import models

    torch.manual_seed(0)
    ours = models.build("small_resnet", 10, in_channels=1, small_input=True, width=4, layers=[2, 1])
    original = models.BasicBlock
    try:  # the same builder with torchvision's block in its place
        models.BasicBlock = lambda inplanes, planes, stride=1, downsample=None: TorchvisionBlock(
            inplanes, planes, stride, downsample)
        torch.manual_seed(0)
        theirs = models.build("small_resnet", 10, in_channels=1, small_input=True, width=4, layers=[2, 1])
    finally:
        models.BasicBlock = original
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))
