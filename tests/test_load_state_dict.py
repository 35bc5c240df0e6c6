"""A plain ``model.load_state_dict(sd)`` of a partitioned, compacted or deployed model's state dict into a
freshly converted model: the PAD layers adopt the incoming mask (and compaction) and compute the same."""

import pytest
import torch
import torchvision

import padnet
from padnet.layers import pad_layers
from tests.helpers import assert_close_f64, random_pad_form
from tests.test_deploy import TinyEncoder
from tests.test_serialization import deployed_moe_encoder

INCLUDE = ["layer1.*", "layer2.0.*"]


def fresh_resnet(seed=1):
    torch.manual_seed(seed)  # other weights than the trained model: the state dict must replace them all
    return padnet.convert(torchvision.models.resnet18(num_classes=10), include=INCLUDE)


def trained_resnet(form):
    return random_pad_form(fresh_resnet(seed=0), form, 0.3, 0.25)


def out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.slow
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("form", ["partitioned", "compacted", "deployed"])
def test_fresh_converted_model_adopts_the_state_dict_form(form):
    trained = trained_resnet(form)
    fresh = fresh_resnet()
    fresh.load_state_dict(trained.state_dict())  # strict
    x = torch.randn(2, 3, 32, 32)
    if form == "deployed":
        # The training form at phi = 0 (both scales 1) with the folded entries: the deployed function,
        # computed through the training form's kernels (another summation order).
        assert_close_f64(out(fresh, x), out(trained, x))
        assert all(layer.compacted and float(layer.phi.detach()) == 0.0 for _, layer in pad_layers(fresh))
    else:
        torch.testing.assert_close(out(fresh, x), out(trained, x), atol=0, rtol=0)
        assert all(layer.compacted == (form == "compacted") for _, layer in pad_layers(fresh))
    reference = trained_resnet("partitioned")
    for (_, a), (_, b) in zip(pad_layers(fresh), pad_layers(reference)):
        assert torch.equal(a.mask, b.mask)
    # Trains on: the adopted layers take gradients.
    fresh.train()(x).sum().backward()
    assert all(layer.static_weight.grad is not None for _, layer in pad_layers(fresh))


@pytest.mark.usefixtures("float64")
def test_deployed_moe_state_dict_into_a_fresh_pad_moe():
    torch.manual_seed(0)
    model = deployed_moe_encoder()
    fresh = padnet.convert(TinyEncoder(), dynamic="moe", num_experts=4)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, 16)
    assert_close_f64(out(fresh, x), out(model, x))


def test_a_mask_of_the_wrong_shape_is_still_refused():
    trained = trained_resnet("partitioned").state_dict()
    trained["layer1.0.conv1.mask"] = trained["layer1.0.conv1.mask"][:1]
    with pytest.raises(RuntimeError, match="layer1.0.conv1.mask"):
        fresh_resnet().load_state_dict(trained)
