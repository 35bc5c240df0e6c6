"""padnet.models.build and what padnet.convert replaces in torchvision models (no full-size forwards)."""

import copy

import pytest
import torch
from torch import nn

from padnet import ConfigError, ConvertConfig, models
from padnet.convert import convert
from padnet.layers import DynamicConv2d, PADConv2d, pad_layers
from tests.helpers import assert_close_f64


def conv_names(model):
    return [n for n, m in model.named_modules() if type(m) is nn.Conv2d]


@pytest.mark.parametrize(
    "name, stem, n_convs, n_shortcuts, n_depthwise",
    [("resnet18", "conv1", 20, 3, 0), ("resnet50", "conv1", 53, 4, 0), ("mobilenet_v2", "features.0.0", 52, 0, 17)],
)
def test_convert_replaces_every_conv_but_the_stem(name, stem, n_convs, n_shortcuts, n_depthwise):
    model = models.build(name, num_classes=10)
    before = conv_names(model)
    assert len(before) == n_convs and before[0] == stem
    depthwise = [n for n, m in model.named_modules() if type(m) is nn.Conv2d and m.groups > 1]
    convert(model, pad=True)
    assert model.padnet_config["converted"] == before[1:]
    assert type(model.get_submodule(stem)) is nn.Conv2d  # stem stays static
    assert conv_names(model) == [stem]
    replaced = [n for n, m in model.named_modules() if isinstance(m, PADConv2d)]
    assert replaced == before[1:]
    assert sum("downsample" in n for n in replaced) == n_shortcuts  # 1x1 projection shortcuts included
    assert len(depthwise) == n_depthwise
    assert all(model.get_submodule(n).groups > 1 for n in depthwise)  # depthwise convs included
    classifier = model.fc if hasattr(model, "fc") else model.classifier[-1]
    assert type(classifier) is nn.Linear


def test_dynamic_baseline_has_no_pad_layers():
    model = convert(models.build("resnet18", 10), pad=False)
    assert not pad_layers(model)
    assert sum(isinstance(m, DynamicConv2d) for m in model.modules()) == 19


def test_resnet50_parameters_at_kappa_03_match_spec():
    from padnet import summary

    model = models.build("resnet50", 1000)
    static = sum(p.numel() for p in model.parameters())
    convert(model, pad=True)
    for _, layer in pad_layers(model):
        n = layer.kernel_numel
        mask = torch.zeros(n, dtype=torch.bool)
        mask[: round(0.3 * n)] = True
        layer.set_mask(mask.reshape(layer.kernel_shape))
    s = summary(model)
    assert static == pytest.approx(25.56e6, rel=0.01)
    assert s.deployable_params == pytest.approx(47.9e6, rel=0.03)  # docs/method.md#storage
    assert s.fully_dynamic_params == pytest.approx(97.1e6, rel=0.03)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "small_resnet"])
def test_small_input_stem(name):
    model = models.build(name, 10, in_channels=1, small_input=True)
    stem = model.get_submodule(conv_names(model)[0])
    assert stem.in_channels == 1 and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    if hasattr(model, "maxpool"):
        assert isinstance(model.maxpool, nn.Identity)


def test_small_resnet_shapes_and_widths():
    model = models.build("small_resnet", 7, in_channels=1, small_input=True, width=4, layers=[1, 2])
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert model.layer2[1].conv1.in_channels == 8
    assert model.fc.in_features == 8


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*small_resnet.*resnet50.*mobilenet_v2"):
        models.build("resnet9", 10)
    with pytest.raises(ValueError, match="num_classes=0"):
        models.build("resnet18", 0)
    with pytest.raises(ValueError, match="width=0"):
        models.build("small_resnet", 10, width=0)


def _randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("pad", [False, True])
def test_upcycle_keeps_the_function(pad):
    torch.manual_seed(0)
    model = models.build("small_resnet", 10, in_channels=3, small_input=True, width=8, layers=[1, 1])
    _randomize_bn(model)
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    fresh = convert(copy.deepcopy(model), pad=pad, init="fresh")
    convert(model, pad=pad, init="upcycle")
    if pad:  # any mask: every kernel and W_s equal the original weight
        for _, layer in pad_layers(model):
            layer.set_mask(torch.rand(layer.kernel_shape) < 0.3)
    with torch.no_grad():
        got = model(x)
        other = fresh(x)
    assert_close_f64(got, expected)
    assert not torch.allclose(other, expected, atol=1e-3)  # fresh init does not keep it: the check can fail


def tiny():
    return models.build("small_resnet", 3, 1, True, width=4, layers=[1])


def test_convert_takes_one_convert_config_peft_style():
    torch.manual_seed(0)
    by_keywords = convert(tiny(), pad=False, num_kernels=2, include="layer1.*")
    settings = ConvertConfig(pad=False, num_kernels=2, include="layer1.*")
    torch.manual_seed(0)
    by_config = convert(tiny(), config=settings)
    assert by_config.padnet_config == by_keywords.padnet_config
    assert by_config.padnet_config["include"] == ["layer1.*"] and settings.include == "layer1.*"  # a copy
    for a, b in zip(by_config.state_dict().values(), by_keywords.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="config= or keyword settings, not both; got config and num_kernels"):
        convert(tiny(), config=settings, num_kernels=3)
    with pytest.raises(TypeError, match="config must be a padnet.ConvertConfig; got dict"):
        convert(tiny(), config={"pad": False})


def test_convert_lists_every_bad_setting_by_name():
    with pytest.raises(ConfigError) as err:
        convert(tiny(), routing="relu", reduction=0, aux_loss_coef=-1.0)
    assert err.value.problems == [
        "routing='relu' is not supported; allowed: 'softmax', 'sigmoid'",
        "reduction=0 must be greater than or equal to 1",
        "aux_loss_coef=-1.0 must be greater than or equal to 0",
    ]
    with pytest.raises(ConfigError, match=r"top_k=9 must be <= num_experts=8"):
        convert(tiny(), top_k=9)
    # The sizes are bounded as in a run config (a typo of K would otherwise allocate K kernels per conv).
    with pytest.raises(ConfigError, match=r"num_kernels=1000 must be less than or equal to 64"):
        convert(tiny(), num_kernels=1000)
    with pytest.raises(ConfigError, match=r"num_kernels=4.0 must be a valid integer"):
        convert(tiny(), num_kernels=4.0)
    with pytest.raises(ConfigError, match=r"dynamic='lstm' is not supported; allowed: 'conv', 'moe'"):
        convert(tiny(), dynamic="lstm")
    # pad is a bool as written (a string was truthy, so pad="no" made the model PAD)
    with pytest.raises(ConfigError, match=r"pad='no' must be a valid boolean"):
        convert(tiny(), pad="no")
    with pytest.raises(ConfigError, match=r"init='upcycle' keeps the model's function only with routing='softmax'"):
        convert(tiny(), init="upcycle", routing="sigmoid")
    with pytest.raises(ValueError, match=r"found no nn.Conv2d to convert in SmallResNet .*include=\['nothing'\]"):
        convert(tiny(), include="nothing")


def _count(model, cls_name):
    return sum(type(m).__name__ == cls_name for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("name, se_blocks", [("mobilenet_v3_small", 9), ("efficientnet_b0", 16)])
def test_squeeze_excitation_convs_stay_static(name, se_blocks):
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    convs = conv_names(model)
    assert _count(model, "SqueezeExcitation") == se_blocks
    se = [n for n, m in model.named_modules() if type(m).__name__ == "SqueezeExcitation"]
    se_convs = [c for c in convs if any(c.startswith(s + ".") for s in se)]
    assert len(se_convs) == 2 * se_blocks  # fc1 (reduce) and fc2 (expand)
    convert(model)
    assert model.padnet_config["skipped"] == {c: "squeeze-excitation" for c in se_convs}
    assert model.padnet_config["converted"] == [c for c in convs[1:] if c not in se_convs]
    assert all(type(model.get_submodule(c)) is nn.Conv2d for c in se_convs)
    from padnet import summary

    table = summary(model).table()
    assert f"{se_convs[0]} (squeeze-excitation)" in table


def test_squeezenet_classifier_conv_stays_static_and_include_brings_it_back():
    import torchvision

    model = torchvision.models.squeezenet1_0(num_classes=10)
    convs = conv_names(model)
    assert len(convs) == 26 and convs[-1] == "classifier.1"
    convert(model)
    assert model.padnet_config["skipped"] == {"classifier.1": "classifier"}
    assert model.padnet_config["converted"] == convs[1:-1]
    back = convert(torchvision.models.squeezenet1_0(num_classes=10), include=["features.*", "classifier.*"])
    assert back.padnet_config["converted"] == convs and back.padnet_config["skipped"] == {}
    assert isinstance(back.classifier[1], PADConv2d)


def test_timm_like_se_block_is_found_by_structure():
    from padnet.layers.conversions import squeeze_excitation_convs

    class SE(nn.Module):  # pools with mean() in its forward: no pooling module to see
        def __init__(self, c):
            super().__init__()
            self.conv_reduce, self.act, self.conv_expand = nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1)

        def forward(self, x):
            return x * self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True)))).sigmoid()

    block = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), SE(16), nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
    assert squeeze_excitation_convs(block) == ["2.conv_reduce", "2.conv_expand"]
    # A 1x1 pair beside a norm, or without biases, is an ordinary bottleneck: not SE.
    assert squeeze_excitation_convs(nn.Sequential(nn.Conv2d(16, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 16, 1))) == []
    assert squeeze_excitation_convs(nn.Sequential(nn.Conv2d(16, 4, 1, bias=False),
                                                  nn.Conv2d(4, 16, 1, bias=False))) == []
