"""padnet.summary: per-layer counts and the totals of docs/method.md#storage."""

import pytest
import torch
import torchvision

import padnet
from padnet.layers import PADConv2d, pad_layers
from tests.helpers import assert_close_f64


def test_pad_layer_counts_follow_the_formula():
    layer = PADConv2d(8, 16, 3, num_kernels=4, bias=True)
    mask = torch.zeros(layer.kernel_shape, dtype=torch.bool)
    mask.view(-1)[:100] = True
    layer.set_mask(mask)
    with torch.no_grad():
        layer.phi.fill_(1.0)
    s = padnet.summary(torch.nn.Sequential(layer)).layers[0]
    n = 16 * 8 * 9
    assert (s.static_params, s.dynamic_params) == (n - 100, 4 * 100 + 4 * 16)
    assert s.router_params == 8 * 4 + 4 * 4 + 4  # fc1 (8 -> 4 hidden), fc2 with bias; phi folds into values
    assert s.dynamic_ratio == pytest.approx(100 / n)
    assert s.lambda_d == pytest.approx(2 * torch.sigmoid(torch.tensor(1.0)).item())
    assert s.lambda_s + s.lambda_d == pytest.approx(2.0)
    assert s.fully_static_params == n + 16 and s.stored_params == 5 * n + 4 * 16 + s.router_params + 1  # + phi
    layer.compact()
    # Compacted, the layer holds the deployable entries plus W_s's nnz zeroed dynamic entries (W_s stays dense).
    assert (padnet.summary(torch.nn.Sequential(layer)).layers[0].stored_params
            == s.deployable_params + layer.num_dynamic + 1)


# docs/method.md#storage (K = 4, attention hidden C_in / 16), in millions
PAPER_COUNTS = {
    "resnet18": dict(static=11.7, dynamic=45.2, pad30=21.8, pad50=28.5),
    "resnet50": dict(static=25.6, dynamic=97.1, pad30=47.9, pad50=62.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_counts_match_spec_section_6(arch):
    model = padnet.convert(getattr(torchvision.models, arch)())
    expected = PAPER_COUNTS[arch]
    s = padnet.summary(model)
    assert s.fully_static_params / 1e6 == pytest.approx(expected["static"], rel=0.01)
    assert s.fully_dynamic_params / 1e6 == pytest.approx(expected["dynamic"], rel=0.01)
    for ratio, key in ((0.3, "pad30"), (0.5, "pad50")):
        padnet.partition(model, None, None, ratio, rounds=1, scope="local", scorer="random")
        s = padnet.summary(model)
        assert s.dynamic_ratio == pytest.approx(ratio, abs=1e-4)
        assert s.deployable_params / 1e6 == pytest.approx(expected[key], rel=0.01), key
        for layer in model.modules():
            if isinstance(layer, PADConv2d):
                layer.set_mask(torch.ones_like(layer.mask))


@pytest.mark.slow
def test_table_and_dict():
    model = padnet.convert(torchvision.models.resnet18(num_classes=10))
    padnet.partition(model, None, None, 0.3, rounds=1, scorer="random")
    s = padnet.summary(model)
    text = s.table()
    assert "layer1.0.conv1" in text and "fully dynamic" in text
    d = s.to_dict()
    assert len(d["layers"]) == 19 and d["dynamic_ratio"] == pytest.approx(0.3, abs=1e-6)


@pytest.mark.slow
def test_deployed_form_reports_stored_entries_and_macs():
    model = padnet.convert(torchvision.models.resnet18(num_classes=10))
    padnet.partition(model, None, None, 0.3, rounds=1, scope="local", scorer="random")
    x = torch.randn(1, 3, 32, 32)
    training = padnet.summary(model, x)
    model.eval()
    deployed = padnet.summary(padnet.deploy(model), x)
    assert [s.kind for s in deployed.layers] == ["DeployedPADConv2d"] * 19
    assert deployed.deployable_params == training.deployable_params  # what deploy() keeps: phi is folded in
    assert deployed.stored_params == deployed.deployable_params  # it holds exactly the deployable entries
    assert deployed.stored_bytes < training.stored_bytes / 2
    # the convolutions are unchanged; the aggregation touches only the K x nnz dynamic entries
    assert deployed.conv_macs == training.conv_macs
    assert deployed.aggregation_macs == training.aggregation_macs == 4 * deployed.dynamic_entries
    assert "kernel aggregation" in deployed.table()
    assert padnet.summary(model).conv_macs is None


@pytest.mark.slow
@pytest.mark.usefixtures("float64")
def test_compact_shrinks_the_model_to_its_deployable_entries_and_dense_ws_without_changing_outputs():
    model = padnet.convert(torchvision.models.resnet18(num_classes=10)).eval()
    padnet.partition(model, None, None, 0.3, rounds=1, scorer="random")
    x = torch.randn(2, 3, 32, 32)
    before, expected = padnet.summary(model), model(x)
    padnet.compact(model)
    after = padnet.summary(model)
    nnz = sum(layer.num_dynamic for _, layer in pad_layers(model))
    assert after.stored_params == before.deployable_params + nnz + 19 < before.stored_params  # + each layer's phi
    assert_close_f64(model(x), expected)
    with pytest.raises(ValueError, match="no PAD layer"):
        padnet.compact(torch.nn.Linear(2, 2))
