"""Missing or malformed data files: each error names the file and the line or byte offset."""

import gzip
import os
import re
import struct

import numpy as np
import pytest

from padnet.data import DataConfig, build_datasets
from padnet.data.fashion_mnist import load_arrays
from padnet.data.folder import ImageFileError
from padnet.data.glue import read_tsv
from padnet.data.idx import IDXError, read_idx, write_idx

GOOD = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)


def idx_bytes(array=GOOD) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


# name -> (file name, bytes, a regex the error must match; every one also names the file)
BAD_IDX = {
    "empty": ("x-idx3-ubyte", b"", r"truncated at offset 0: the 4-byte IDX header"),
    "short-header": ("x-idx3-ubyte", b"\x00\x00", r"truncated at offset 2"),
    "wrong-magic": ("x-idx3-ubyte", b"\x1f\x8b" + idx_bytes()[2:], r"bad IDX magic number at offset 0: bytes 1f8b0803"),
    "unknown-type": ("x-idx3-ubyte", b"\x00\x00\x07\x03" + idx_bytes()[4:],
                     r"bad IDX magic number at offset 0: bytes 00000703"),
    "zero-dims": ("x-idx3-ubyte", b"\x00\x00\x08\x00", r"at offset 3 declares 0 dimensions"),
    "cut-in-dims": ("x-idx3-ubyte", idx_bytes()[:9],
                    r"truncated at offset 9 inside the dimension list \(needs 16 bytes\)"),
    "cut-in-data": ("x-idx3-ubyte", idx_bytes()[:-5], r"truncated at offset 35: shape \(2, 3, 4\) needs 40 bytes"),
    "trailing": ("x-idx3-ubyte", idx_bytes() + b"\x00\x00", r"2 unexpected trailing bytes after offset 40"),
    "not-gzip": ("x-idx3-ubyte.gz", idx_bytes(), r"cannot read the gzip stream"),
    "cut-gzip": ("x-idx3-ubyte.gz", gzip.compress(idx_bytes())[:-12], r"cannot read the gzip stream"),
    "gzip-cut-in-data": ("x-idx3-ubyte.gz", gzip.compress(idx_bytes()[:-1]),
                         r"\(decompressed\): truncated at offset 39"),
}


@pytest.mark.parametrize("case", list(BAD_IDX))
def test_malformed_idx_names_file_and_offset(tmp_path, case):
    name, data, pattern = BAD_IDX[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(IDXError, match=pattern) as err:
        read_idx(path)
    assert str(err.value).startswith(str(path))


def fmnist_dir(tmp_path, n=6, labels=None, images=None, skip=()):
    """A Fashion-MNIST directory with tiny, valid files unless told otherwise."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        if f"{prefix}-images" not in skip:
            write_idx(tmp_path / f"{prefix}-images-idx3-ubyte",
                      images if images is not None else rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte",
                  labels if labels is not None else (np.arange(n) % 10).astype(np.uint8))
    return tmp_path


def test_label_out_of_range_names_file_index_and_offset(tmp_path):
    labels = np.array([0, 1, 12, 3, 10, 5], dtype=np.uint8)
    fmnist_dir(tmp_path, labels=labels)
    with pytest.raises(IDXError) as err:
        load_arrays(tmp_path, train=True)
    text = str(err.value)
    assert text.startswith(str(tmp_path / "train-labels-idx1-ubyte"))
    assert "label 12 at index 2 (byte offset 10) is out of range; allowed 0..9 (2 bad labels in all)" in text


def test_negative_label_in_signed_idx_is_out_of_range(tmp_path):
    fmnist_dir(tmp_path, labels=np.array([0, 1, 2, -1, 4, 5], dtype=np.int32))
    with pytest.raises(IDXError, match=r"label -1 at index 3 \(byte offset 20\) is out of range"):
        load_arrays(tmp_path, train=False)


@pytest.mark.parametrize("case, kwargs, pattern", [
    ("count-mismatch", {"labels": np.zeros(5, dtype=np.uint8)}, r"train-labels-idx1-ubyte: 5 labels for 6 images in"),
    ("images-not-uint8", {"images": np.zeros((6, 28, 28), dtype=np.float32)},
     r"train-images-idx3-ubyte: expected uint8 images of shape \(N, H, W\); got float32"),
    ("images-2d", {"images": np.zeros((6, 784), dtype=np.uint8)}, r"train-images-idx3-ubyte: expected uint8 images"),
    ("labels-2d", {"labels": np.zeros((6, 1), dtype=np.uint8)},
     r"train-labels-idx1-ubyte: expected a 1-D label vector"),
])
def test_inconsistent_fashion_mnist_files_are_named(tmp_path, case, kwargs, pattern):
    fmnist_dir(tmp_path, **kwargs)
    with pytest.raises(IDXError, match=pattern):
        load_arrays(tmp_path, train=True)


def test_truncated_file_stops_the_run_before_training(tmp_path):
    """Through the trainer: a damaged data file stops the run at build time, naming file and offset."""
    from padnet.train import Trainer, config_from_dict

    fmnist_dir(tmp_path / "fm")
    path = tmp_path / "fm" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    config = config_from_dict({"data": {"name": "fashion_mnist", "root": str(tmp_path / "fm")},
                               "run_dir": str(tmp_path / "run"), "progress": False, "tensorboard": False,
                               "batch_size": 2, "model": {"width": 4, "layers": [1]}})
    with pytest.raises(IDXError, match=rf"{path}: truncated at offset 1000: shape \(6, 28, 28\) needs 4720 bytes"):
        Trainer(config).train()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_reports_a_damaged_data_file_in_one_line(tmp_path, capsys):
    from padnet.cli import main

    fmnist_dir(tmp_path / "fm")
    path = tmp_path / "fm" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data: {{name: fashion_mnist, root: {tmp_path / 'fm'}}}\nrun_dir: {tmp_path / 'run'}\n"
        "progress: false\ntensorboard: false\nbatch_size: 2\nmodel: {width: 4, layers: [1]}\n"
    )
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: truncated at offset 1000" in err and "Traceback" not in err


def test_missing_data_file_is_named_with_how_to_get_it(tmp_path):
    fmnist_dir(tmp_path, skip=("t10k-images",))
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\[.gz\] not found.*apt-get install"):
        load_arrays(tmp_path, train=False)


# ------------------------------------------------------------------------------------------ GLUE TSV
RTE_HEADER = "index\tsentence1\tsentence2\tlabel"
BAD_TSV = {
    "missing-column": ("RTE", "index\tsentence1\tsentence_2\tlabel\n0\ta\tb\tentailment\n",
                       r":1: header has no column 'sentence2' \(GLUE RTE needs it\)"),
    "extra-field": ("RTE", f"{RTE_HEADER}\n0\ta\tb\tentailment\n1\ta\tb\tc\tentailment\n",
                    r":3: malformed GLUE RTE row: has 5 tab-separated fields; the header has 4"),
    "missing-field": ("RTE", f"{RTE_HEADER}\n0\ta\tentailment\n", r":2: malformed GLUE RTE row: has 3 tab-separated"),
    "label-out-of-range": ("RTE", f"{RTE_HEADER}\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n",
                           r":3: malformed GLUE RTE row: label 'maybe' is out of range; allowed: 'entailment', "
                           r"'not_entailment'"),
    "binary-label-2": ("SST-2", "sentence\tlabel\ngood\t1\nbad\t2\n",
                       r":3: malformed GLUE SST-2 row: label '2' is out of range; allowed: '0', '1'"),
    "score-out-of-range": ("STS-B", "index\tsentence1\tsentence2\tscore\n0\ta\tb\t5.5\n",
                           r":2: malformed GLUE STS-B row: score 5.5 is out of range; STS-B scores lie in \[0, 5\]"),
    "score-not-number": ("STS-B", "index\tsentence1\tsentence2\tscore\n0\ta\tb\thigh\n",
                         r":2: malformed GLUE STS-B row: label 'high' is not a number"),
    "cola-columns": ("CoLA", "gj04\t1\t\tfine\ngj04\t1\tno sentence\n",
                     r":2: malformed GLUE CoLA row: has 3 tab-separated fields; GLUE CoLA rows have 4"),
    "empty-file": ("RTE", "", r": empty file; expected a header line"),
    "header-only": ("RTE", f"{RTE_HEADER}\n", r": no examples"),
}


@pytest.mark.parametrize("case", list(BAD_TSV))
def test_malformed_glue_tsv_names_file_and_line(tmp_path, case):
    directory, text, pattern = BAD_TSV[case]
    path = tmp_path / directory / "train.tsv"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ValueError, match=pattern) as err:
        read_tsv(directory, "train", tmp_path)
    assert str(err.value).startswith(str(path))


def test_missing_glue_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=rf"GLUE RTE dev file not found; looked for {tmp_path / 'RTE' / 'dev.tsv'}"):
        read_tsv("rte", "dev", tmp_path)


# ------------------------------------------------------------------------------------------ ImageFolder
def image_tree(root, damaged=None):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (20, 24), (i * 100, 50, 0)).save(root / split / cls / f"{i}.jpg")
    return root


@pytest.mark.parametrize("damage", ["not-an-image", "truncated-jpeg"])
def test_unreadable_image_names_the_file(tmp_path, damage):
    root = image_tree(tmp_path)
    bad = root / "val" / "dog" / "1.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"this is not a JPEG" if damage == "not-an-image" else data[: len(data) // 2])
    _, test, _ = build_datasets(DataConfig(name="imagefolder", root=str(root), image_size=16))
    assert test[0][0].shape == (3, 16, 16)
    with pytest.raises(ImageFileError, match=rf"{bad}: cannot read this image"):
        test[3]


def test_imagefolder_without_images_names_the_directory(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'train'}: .*cat"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_imagefolder_class_mismatch_is_named(tmp_path):
    root = image_tree(tmp_path)
    (root / "val" / "dog").rename(root / "val" / "wolf")
    with pytest.raises(ValueError, match=rf"{root}: train classes .* differ from val classes"):
        build_datasets(DataConfig(name="imagefolder", root=str(root), image_size=16))


# ------------------------------------------------------------------------------ text files
def _text_file(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, data, message", [
    ("long.csv", b"text,label\n" + b"x" * (2 << 20) + b",a\n", "long.csv:2: a line longer than 1,048,576 bytes"),
    ("long.txt", b"ok\n" + b"y" * (2 << 20), "long.txt:2: a line longer than 1,048,576 bytes"),
    ("wide.csv", b",".join(b"c%d" % i for i in range(5000)) + b"\n", "wide.csv:1: a header of 5,000 columns"),
    ("wide.tsv", b"\t".join(b"c%d" % i for i in range(5000)) + b"\n", "wide.tsv:1: a header of 5,000 columns"),
    ("wide.jsonl", b'{"text": "a", "label": "b"}\n' + b"{" + b", ".join(b'"k%d": 1' % i for i in range(1500)) + b"}\n",
     "wide.jsonl:2: more than 1,000 distinct keys"),
    ("latin1.csv", "text,label\ncaf\u00e9,a\n".encode("latin-1"), "latin1.csv:2: not UTF-8 text"),
    ("deep.jsonl", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "deep.jsonl:1: not a JSON object"),
])
def test_text_files_bounded_per_line_and_one_clear_error(tmp_path, name, data, message):
    from padnet.data.text_files import read_records
    from padnet.errors import DataError
    from padnet.prediction import read_text_inputs

    path = _text_file(tmp_path, name, data)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / message))):
        if name.endswith(".txt"):
            read_text_inputs(path, ["text"])
        else:
            read_records(path, ["text", "label"])


def test_a_fifo_or_device_is_refused_not_read(tmp_path):
    from padnet.data.text_files import read_records
    from padnet.errors import DataError
    from padnet.prediction import read_text_inputs

    os.mkfifo(tmp_path / "pipe.csv")  # opening it would block until a writer came
    with pytest.raises(DataError, match="pipe.csv: not a regular file"):
        read_records(tmp_path / "pipe.csv", ["text"])
    with pytest.raises(DataError, match="/dev/zero: not a regular file"):
        read_text_inputs("/dev/zero", ["text"])


def test_quoting_a_bom_and_empty_texts_still_read(tmp_path):
    from padnet.data.text_files import read_records

    path = _text_file(tmp_path, "ok.csv", '\ufefftext,label\n"a, quoted\nline",x\n"",y\n'.encode())
    assert [row for _, row in read_records(path, ["text", "label"])] == [
        {"text": "a, quoted\nline", "label": "x"}, {"text": "", "label": "y"}]
