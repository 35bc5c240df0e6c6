"""Fixtures for every test; shared plain helpers are in ``tests/helpers.py``."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # Dynamic convs pick their strategy with the deterministic rule in tests: the autotuner's picks
    # depend on timing (so on the machine's load), and two layers compared to 1e-6 could then round
    # differently. Tests of the autotuner set it explicitly.
    from padnet.layers import conv_strategy

    previous = conv_strategy.get_conv_strategy()
    conv_strategy.set_conv_strategy("heuristic")
    yield
    conv_strategy.set_conv_strategy(previous)


@pytest.fixture
def float64():
    """Modules and tensors the test builds are float64 (compare with ``helpers.assert_close_f64``)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
