import pytest
import torch

import padnet
from padnet.layers import DynamicConv2d, PADConv2d
from tests.helpers import assert_close_f64


def test_schedule_values_per_step():
    sched = padnet.TemperatureSchedule(start=30.0, end=1.0, epochs=10)
    assert sched(0) == 30.0
    assert sched(5) == pytest.approx(15.5)
    assert sched(10) == 1.0 and sched(25) == 1.0
    # per step: 100 steps per epoch, step 250 is epoch 2.5
    assert sched.at_step(250, 100) == pytest.approx(30 - 29 * 0.25)
    values = [sched.at_step(s, 7) for s in range(80)]
    assert all(a > b for a, b in zip(values, values[1:70])), "strictly decreasing during annealing"
    assert padnet.TemperatureSchedule(epochs=0)(0) == 1.0


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="start=0"):
        padnet.TemperatureSchedule(start=0)
    with pytest.raises(ValueError, match="epochs=-1"):
        padnet.TemperatureSchedule(epochs=-1)
    with pytest.raises(ValueError, match="steps_per_epoch=0"):
        padnet.TemperatureSchedule().at_step(1, 0)


def test_set_temperature_changes_softmax_layers_only():
    model = torch.nn.Sequential(DynamicConv2d(4, 4, 3), PADConv2d(4, 4, 3), DynamicConv2d(4, 4, 3, routing="sigmoid"))
    assert padnet.set_temperature(model, 7.0) == 2
    assert model[0].temperature == 7.0 and model[1].temperature == 7.0 and model[2].temperature == 1.0
    x = torch.randn(2, 4, 5, 5)
    torch.nn.init.normal_(model[0].attention.fc2.weight)
    hot = model[0].attention_weights(x)
    padnet.set_temperature(model, 1.0)
    cold = model[0].attention_weights(x)
    assert hot.max() < cold.max()  # higher temperature flattens the attention
    with pytest.raises(ValueError, match="tau=0"):
        padnet.set_temperature(model, 0)


@pytest.mark.usefixtures("float64")
def test_set_temperature_reaches_deployed_convs():
    from padnet.layers import DeployedPADConv2d

    pad = PADConv2d(4, 4, 3, padding=1)
    deployed = DeployedPADConv2d.from_pad(pad.eval())
    model = torch.nn.Sequential(deployed)
    assert padnet.set_temperature(model, 7.0) == 1
    assert deployed.temperature == 7.0
    x = torch.randn(2, 4, 5, 5)
    pad.temperature = 7.0
    assert_close_f64(deployed(x), pad(x))
