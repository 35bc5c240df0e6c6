"""ImageFolder trees and IDX files that once fooled padnet (issue 14): hidden folders as classes, symlink
loops, a single class, decompression bombs, and gzip IDX files that inflate far past their header."""

import gzip
import os
import re
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from padnet.data.folder import ImageFileError, image_folder, load_image
from padnet.data.idx import IDXError, read_idx
from padnet.errors import DataError
from tests.helpers import SAFETY_TIMEOUT_S, child_env

Image = pytest.importorskip("PIL.Image")


def _tree(root, classes, per_class=2, split="train"):
    for name in classes:
        d = root / split / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    return root


def test_hidden_folders_are_not_classes(tmp_path):
    _tree(tmp_path, ["cat", "dog", ".ipynb_checkpoints"])
    (tmp_path / "train" / "cat" / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cat" / ".hidden" / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "dog" / ".x.png")
    data = image_folder(tmp_path, train=True, image_size=8)
    assert data.classes == ["cat", "dog"] and len(data) == 4


def test_symlink_loop_is_not_followed(tmp_path):
    _tree(tmp_path, ["cat", "dog"])
    (tmp_path / "train" / "cat" / "loop").symlink_to(tmp_path / "train" / "cat", target_is_directory=True)
    (tmp_path / "train" / "mirror").symlink_to(tmp_path / "train" / "dog", target_is_directory=True)
    data = image_folder(tmp_path, train=True, image_size=8)
    assert data.classes == ["cat", "dog"] and len(data) == 4


@pytest.mark.parametrize("classes", [["only"], ["only", ".git"]])
def test_fewer_than_two_classes_is_refused(tmp_path, classes):
    _tree(tmp_path, classes)
    with pytest.raises(DataError, match=rf"{tmp_path / 'train'}: 1 class folder \(only\); image classification "
                                        "needs at least 2"):
        image_folder(tmp_path, train=True, image_size=8)


@pytest.mark.parametrize("side, pattern", [
    (15_000, r"cannot read this image \(DecompressionBombError"),  # past PIL's own guard
    (9_000, r"9000x9000 = 81,000,000 pixels is more than 67,108,864"),  # under PIL's, over padnet's
])
def test_decompression_bomb_is_refused_with_the_file_named(tmp_path, side, pattern):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(bomb)  # tens of millions of pixels in a few tens of KB
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageFileError, match=rf"{bomb}: {pattern}"):
        load_image(str(bomb))


@pytest.mark.slow
def test_gzip_idx_is_read_no_further_than_its_header_declares(tmp_path):
    """A gzip IDX file declaring 10 values followed by 1 GiB of zeros (about 1 MB compressed) is refused
    under a 256 MB address-space margin: reading it whole would need 1 GiB."""
    path = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(struct.pack(">HBBI", 0, 0x08, 1, 10) + bytes(10))
        chunk = bytes(2**24)
        for _ in range(64):
            f.write(chunk)
    assert path.stat().st_size < 3_000_000
    script = textwrap.dedent(f"""
        import resource
        from padnet.data.idx import IDXError, read_idx
        status = open("/proc/self/status").read()
        mapped = int(next(l for l in status.splitlines() if l.startswith("VmSize:")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mapped + 256 * 2**20, resource.RLIM_INFINITY))
        try:
            read_idx({str(path)!r})
            print("read")
        except IDXError as err:
            print("IDXError", err)
        except BaseException as err:
            print(type(err).__name__, err)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(),
                          timeout=SAFETY_TIMEOUT_S)
    assert proc.stdout.startswith(f"IDXError {path} (decompressed): more unexpected trailing bytes after offset 18"), \
        (proc.stdout, proc.stderr[-2000:])


def test_gzip_idx_still_reads(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 4) + array.tobytes())
    assert (read_idx(path) == array).all()
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 4) + array.tobytes()[:-1])
    with pytest.raises(IDXError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("encoding, line", [("latin-1", 3), ("utf-16", 1)])
def test_glue_tsv_not_utf8_names_file_and_line(tmp_path, encoding, line):
    from padnet.data.glue import read_tsv

    tsv = tmp_path / "RTE" / "dev.tsv"
    tsv.parent.mkdir()
    tsv.write_bytes("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tcafé\tb\tentailment\n"
                    .encode(encoding))
    with pytest.raises(DataError, match=rf"{tsv}:{line}: not UTF-8 text"):
        read_tsv("rte", "validation", tmp_path)


# ------------------------------------------------------------------------------ image_csv rows
def _image_csv(tmp_path, rows):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    Image.new("RGB", (4, 4)).save(data / "ok.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    csv = data / "train.csv"
    csv.write_text("path,label\nok.png,a\n" + "".join(f"{row},b\n" for row in rows))
    return csv


@pytest.mark.parametrize("row, message", [
    ("../outside.png", "lies outside the CSV's folder"),
    ("{tmp}/outside.png", "lies outside the CSV's folder"),
    ("link.png", "lies outside the CSV's folder"),  # a link inside that leads out
    ("fifo.png", "is not a regular file (a folder, FIFO or device)"),
    ("sub", "is not a regular file (a folder, FIFO or device)"),
    ("missing.png", "no such file"),
])
def test_image_csv_rows_stay_inside_the_csv_folder_and_name_regular_files(tmp_path, row, message):
    from padnet.data.folder import ImageCSV

    csv = _image_csv(tmp_path, [row.format(tmp=tmp_path)])
    (csv.parent / "link.png").symlink_to(tmp_path / "outside.png")
    os.mkfifo(csv.parent / "fifo.png")
    (csv.parent / "sub").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{csv}:3: path {row.format(tmp=tmp_path)!r}") + ".*"
                       + re.escape(message)):
        ImageCSV(csv)


def test_image_csv_outside_paths_when_the_config_allows_them_but_never_devices(tmp_path):
    from padnet.data.folder import ImageCSV

    csv = _image_csv(tmp_path, ["../outside.png", str(tmp_path / "outside.png")])
    assert [label for _, label in ImageCSV(csv, allow_outside=True).samples] == [0, 1, 1]
    csv.write_text("path,label\n/dev/zero,a\n")
    with pytest.raises(DataError, match="'/dev/zero' is not a regular file"):
        ImageCSV(csv, allow_outside=True)
