"""padnet.distributed in one process: torchrun environment parsing, backend choice, and the
identities that keep one-process runs exactly as they were."""

import pytest
import torch
from torch.utils.data import RandomSampler

from padnet import distributed
from padnet.cli import main
from padnet.distributed import DistributedSetupError, LaunchEnv, launch_env


def test_launch_env_reads_torchrun_variables():
    assert launch_env({}) is None
    assert launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == LaunchEnv(3, 4, 1)


@pytest.mark.parametrize("environ, message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, r"RANK=2 must be in \[0, WORLD_SIZE=2\)"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
])
def test_launch_env_names_the_bad_variable(environ, message):
    with pytest.raises(DistributedSetupError, match=message):
        launch_env(environ)


def test_backend_follows_the_device():
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"


def test_one_process_starts_no_group_and_helpers_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is False and not distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env("cpu") is False and not distributed.is_initialized()
    x = torch.tensor(float("nan"))
    assert distributed.mean(x) is x and distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object(5) == 5 and distributed.all_ranks_agree(True)


def test_sampler_is_the_one_process_order_in_one_process():
    # Under DDP each rank reads rank::world of this permutation; in one process it is the whole of it.
    data = list(range(37))
    for seed, epoch in ((0, 0), (3 * 1_000_003, 1), (5, -1)):
        expected = list(RandomSampler(data, generator=torch.Generator().manual_seed(seed + epoch)))
        assert list(distributed.train_sampler(data, seed, epoch)) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_refused_before_any_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match="device='cuda' but CUDA is not available"):
        distributed.init_from_env("cuda")
    assert not distributed.is_initialized()


def test_cli_refuses_one_process_commands_under_torchrun(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for argv in (["eval", "--run", str(tmp_path)], ["report", str(tmp_path)]):
        with pytest.raises(SystemExit, match="runs in one process .*WORLD_SIZE=2"):
            main(argv)


def test_cli_reports_a_bad_torchrun_environment(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert main(["train", "--config", str(tmp_path / "x.yaml")]) == 2
    assert "WORLD_SIZE='two' is not an integer" in capsys.readouterr().err
