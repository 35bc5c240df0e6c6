import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine has 2 shared cores; two threads per process oversubscribe them (3x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
