"""ONNX export: every conv form (static, DY-Conv, PAD element and channel, deployed) runs in onnxruntime
with a dynamic batch axis and gives the model's outputs; `padnet export --format onnx` writes and checks
the file beside the model file."""

import json

import pytest
import torch

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import padnet  # noqa: E402
from padnet.cli import main  # noqa: E402
from padnet.errors import UsageError  # noqa: E402
from padnet.models import build  # noqa: E402
from padnet.onnx_export import RELATIVE_TOLERANCE, export_onnx  # noqa: E402
from tests.helpers import write_config  # noqa: E402

pytestmark = pytest.mark.slow  # each export traces the model (several seconds)


def _model(form: str):
    torch.manual_seed(0)
    model = build("small_resnet", 5, in_channels=1, small_input=True, width=4, layers=[1, 1])
    if form == "static":
        return model.eval()
    padnet.convert(model, pad=form != "dy-conv", num_kernels=2, granularity="channel" if "channel" in form else
                   "element")
    if form.startswith("pad"):
        batch = (torch.randn(4, 1, 12, 12), torch.randint(0, 5, (4,)))
        padnet.partition(model, [batch], loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
                         dynamic_ratio=0.3, rounds=1)
        padnet.deploy(model)
    return model.eval()


@pytest.mark.parametrize("form", ["static", "dy-conv", "pad-element", "pad-channel"])
def test_every_conv_form_runs_in_onnxruntime_at_any_batch_size(form, tmp_path):
    model = _model(form)
    written = export_onnx(model, torch.randn(3, 1, 12, 12), tmp_path / "m.onnx")
    assert written["file_bytes"] > 0 and written["max_abs_diff"] is not None
    session = ort.InferenceSession(written["path"], providers=["CPUExecutionProvider"])
    for batch in (1, 4, 9):
        x = torch.randn(batch, 1, 12, 12)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            expected = model(x)
        # float32 in another summation order (see RELATIVE_TOLERANCE's reasoning), never a wrong function
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= RELATIVE_TOLERANCE * max(1.0, float(expected.abs().max()))


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(UsageError, match="must end in .onnx"):
        export_onnx(_model("static"), torch.randn(1, 1, 12, 12), tmp_path / "m.safetensors")
    with pytest.raises(UsageError, match="example must be one input tensor"):
        export_onnx(_model("static"), {"input_ids": torch.zeros(1, 4)}, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_padnet_export_format_onnx(tmp_path, capsys):
    config = write_config(tmp_path, "o", epochs=1)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--set", f"run_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["onnx"]["path"] == str(run / "model.onnx") and (run / "model.onnx").is_file()
    assert out["onnx"]["max_abs_diff"] is not None  # checked in onnxruntime before it was written
