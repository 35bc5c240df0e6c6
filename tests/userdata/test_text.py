"""Your own labelled text end to end: ``task: text_classification`` from CSV, TSV or JSON-lines files,
any label set, regression, a carved validation split, and ``padnet predict`` agreeing with the run."""

import csv
import json
import os
import random

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

import padnet
from padnet import cli
from padnet.data.glue import GlueExamples
from padnet.errors import DataError
from padnet.metrics import macro_f1, matthews_corrcoef
from padnet.serialization import read_record
from padnet.text import labels as L
from tests.text.test_glue_cli import tiny_model_dir  # noqa: F401  (the fixture: a 2-layer BERT)

# End-to-end runs: the slow lane (make test-fast leaves them out).
pytestmark = pytest.mark.slow

TOPICS = {"sports": "goal match team score coach", "politics": "vote election party law senate",
          "tech": "chip software code robot data", "health": "doctor virus diet sleep heart",
          "arts": "film paint music novel stage"}
FILLER = "the a of and to in on today new big".split()


def _news(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = list(TOPICS)[i % len(TOPICS)]
        words = rng.sample(TOPICS[topic].split(), 2) + rng.sample(FILLER, 4)
        rng.shuffle(words)
        rows.append((" ".join(words), topic))
    return rows


def _write(path, header, rows, kind="csv"):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows))
    elif kind == "tsv":
        path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n")
    else:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    return str(path)


def _config(tmp_path, model_dir, section: dict, name="run", epochs=3) -> str:
    config = {"task": "text_classification", "run_dir": str(tmp_path / name), "seed": 0, "epochs": epochs,
              "batch_size": 8, "eval_batch_size": 8, "progress": False, "tensorboard": False, "threads": 1,
              "text_classification": {"model": str(model_dir), "max_length": 16} | section,
              "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_five_class_csv_to_predict(tmp_path, tiny_model_dir, capsys):  # noqa: F811
    train = _write(tmp_path / "train.csv", ["text", "topic"], _news(60, 0))
    val_rows = _news(20, 1)
    val = _write(tmp_path / "val.csv", ["text", "topic"], val_rows)
    config = _config(tmp_path, tiny_model_dir, {"train_file": train, "validation_file": val, "label_column": "topic"})
    assert cli.main(["train", "--config", config]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["info"]["label_names"] == sorted(TOPICS) and results["main_metric"] == "accuracy"
    assert set(results["test"]) >= {"accuracy", "macro_f1", "mcc", "loss"}
    assert cli.main(["export", "--run", str(tmp_path / "run")]) == 0
    model_file = tmp_path / "run" / "model.safetensors"
    record = read_record(model_file)["predict"]
    assert record["label_names"] == sorted(TOPICS)
    assert record["input"] == {"kind": "text", "tokenizer": str(tiny_model_dir), "max_length": 16, "columns": ["text"]}
    capsys.readouterr()
    # The file names the tiny model's folder as its tokenizer: refused until the user names it.
    assert cli.main(["predict", "--model", str(model_file), val, "--json", "--quiet"]) == 2
    assert ("names a folder, and padnet never loads a tokenizer from a folder a model file names: pass "
            "--tokenizer FOLDER") in capsys.readouterr().err
    tok = ["--tokenizer", str(tiny_model_dir)]
    assert cli.main(["predict", "--model", str(model_file), val, "--json", "--quiet", *tok]) == 0
    predicted = json.loads(capsys.readouterr().out)
    truth = [topic for _, topic in val_rows]
    labels = [r["label"] for r in predicted]
    names = sorted(TOPICS)
    ids_true, ids_pred = [names.index(t) for t in truth], [names.index(p) for p in labels]
    assert sum(p == t for p, t in zip(labels, truth)) / len(truth) == results["test"]["accuracy"]
    assert macro_f1(ids_true, ids_pred) == pytest.approx(results["test"]["macro_f1"])
    assert matthews_corrcoef(ids_true, ids_pred) == pytest.approx(results["test"]["mcc"])
    # Texts on the command line, a file of lines, and the Python API agree.
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(text for text, _ in val_rows[:3]) + "\n")
    assert cli.main(["predict", "--model", str(model_file), str(lines), val_rows[3][0], "--csv", "--quiet", *tok]) == 0
    out = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["label"] for r in out] == labels[:4]
    api = padnet.predict(model_file, [text for text, _ in val_rows[:4]], tokenizer=str(tiny_model_dir))
    assert [r["label"] for r in api] == labels[:4]
    # Four texts alone, not in a batch of all of them: padded to another length, the matmuls run over other
    # shapes, so a float32 probability may differ in its last bits; 1e-5 bounds that rounding with margin.
    assert [r["probability"] for r in api] == pytest.approx([r["probability"] for r in predicted[:4]], abs=1e-5)


def test_regression_jsonl_and_pairs_tsv_with_carved_validation(tmp_path, tiny_model_dir, capsys):  # noqa: F811
    rng = random.Random(0)
    rows = [(" ".join(rng.sample(FILLER, 3)), round(rng.uniform(0, 5), 2)) for _ in range(40)]
    train = _write(tmp_path / "train.jsonl", ["sentence", "score"], rows, "jsonl")
    config = _config(tmp_path, tiny_model_dir, {"train_file": train, "text_column": "sentence",
                                                "label_column": "score"}, "reg", epochs=1)
    assert cli.main(["train", "--config", config]) == 0
    results = json.loads((tmp_path / "reg" / "results.json").read_text())
    assert results["info"]["problem"] == "regression" and results["main_metric"] == "pearson"
    assert set(results["test"]) >= {"mse", "pearson", "spearman"} and results["info"]["eval_examples"] == 4
    assert cli.main(["export", "--run", str(tmp_path / "reg")]) == 0
    value = padnet.predict(tmp_path / "reg" / "model.safetensors", ["the big new"], tokenizer=str(tiny_model_dir))[0]
    assert set(value) == {"input", "value"}
    pairs = [(a, b, int(a.split()[0] == b.split()[0])) for a, b in
             ((" ".join(rng.sample(FILLER, 3)), " ".join(rng.sample(FILLER, 3))) for _ in range(30))]
    tsv = _write(tmp_path / "pairs.tsv", ["first", "second", "same"], pairs, "tsv")
    config = _config(tmp_path, tiny_model_dir, {"train_file": tsv, "text_column": "first", "text_pair_column": "second",
                                                "label_column": "same", "validation_fraction": 0.2}, "pairs", epochs=1)
    assert cli.main(["train", "--config", config]) == 0
    results = json.loads((tmp_path / "pairs" / "results.json").read_text())
    per_class = [sum(y == k for _, _, y in pairs) for k in (0, 1)]
    assert results["info"]["label_names"] == ["0", "1"]
    assert results["info"]["eval_examples"] == sum(max(1, round(0.2 * n)) for n in per_class)  # stratified, each class
    assert cli.main(["export", "--run", str(tmp_path / "pairs")]) == 0
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(tmp_path / "pairs" / "model.safetensors"), tsv, "--quiet",
                     "--tokenizer", str(tiny_model_dir)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 30
    with pytest.raises(padnet.DataError, match="classifies pairs of texts"):
        padnet.predict(tmp_path / "pairs" / "model.safetensors", ["only one text"], tokenizer=str(tiny_model_dir))


def test_carved_validation_is_seeded_and_stratified():
    labels = [0] * 30 + [1] * 10
    examples = GlueExamples("t", "train", [str(i) for i in range(40)], None, labels, "f.csv")
    train, dev = L.carve(examples, labels, 0.2, seed=3, stratified=True)
    assert sorted(dev.labels) == [0] * 6 + [1] * 2 and len(train) == 32
    assert set(train.text_a).isdisjoint(dev.text_a)
    assert L.carve(examples, labels, 0.2, seed=3, stratified=True)[1].text_a == dev.text_a
    assert L.carve(examples, labels, 0.2, seed=4, stratified=True)[1].text_a != dev.text_a


def test_label_spaces():
    assert L.label_names(["10", "9", 2], None) == ["2", "9", "10"]  # integers: numeric order
    assert L.label_names(["b", "a"], ["b", "a"]) == ["b", "a"]  # given: that order
    assert L.is_regression(["0.5", "1"], "auto") and not L.is_regression(["0", "1"], "auto")
    assert L.is_regression(["1", "2"], "regression") and not L.is_regression(["1.5", "x"], "classification")


def test_labels_a_run_could_only_misread_are_refused_naming_the_file_and_line():
    with pytest.raises(DataError, match=r"f.csv: the labels mix numbers \('1.5'\) and names \('x'\); set "
                                        "text_classification.problem"):
        L.is_regression(["1.5", "x"], "auto", "f.csv")
    with pytest.raises(DataError, match="f.jsonl:3: label nan is not a finite number"):
        L.encode_labels([0.5, 1.0, float("nan")], [1, 2, 3], None, "f.jsonl")
    with pytest.raises(DataError, match="f.jsonl:2: label inf is not a class name"):
        L.encode_labels(["a", float("inf")], [1, 2], ["a", "b"], "f.jsonl")
    with pytest.raises(DataError, match="f.csv: the labels have 100,000 distinct values; classification takes at "
                                        "most 10,000 classes"):
        L.label_names([str(i) for i in range(100_000)], None, "f.csv")


@pytest.mark.parametrize("case", ["missing column", "unknown label", "empty file"])
def test_bad_files_give_one_line_errors(case, tmp_path, tiny_model_dir, capsys):  # noqa: F811
    train = _write(tmp_path / "train.csv", ["text", "label"], [(t, y) for t, y in _news(10, 0)])
    {"missing column": lambda p: _write(p, ["text", "topic"], _news(5, 1)),
     "unknown label": lambda p: _write(p, ["text", "label"], _news(3, 1) + [("x y", "weather")]),
     "empty file": lambda p: p.write_text("") and str(p)}[case](tmp_path / "val.csv")
    message = {"missing column": "text_classification.label_column='label': " + str(tmp_path / "val.csv")
                                 + " has no such column; it has 'text', 'topic'",
               "unknown label": "val.csv:5: label 'weather' is not one of the training labels ('arts', 'health',",
               "empty file": "val.csv': no examples (an empty file or a header only)"}[case]
    config = _config(tmp_path, tiny_model_dir, {"train_file": train, "validation_file": str(tmp_path / "val.csv")})
    assert cli.main(["train", "--config", config]) == 2
    err = capsys.readouterr().err
    # One line; a problem the config check finds is listed under its one-line heading, as every config problem.
    lines = err.strip().splitlines()
    assert message in err and (len(lines) == 1 or len(lines) == 2 and "invalid config: 1 problem" in lines[0]), err
    # Found before the run (the columns, from the header) or while building its data (a label): either
    # way the refused run leaves no run directory behind.
    assert not (tmp_path / "run").exists()


def test_labels_name_integer_class_ids_through_to_predict(tmp_path, tiny_model_dir, capsys):  # noqa: F811
    """A 0/1 column with ``labels: [negative, positive]``: the run, the model file and predict speak names."""
    rows = [(text, int(topic == "sports")) for text, topic in _news(40, 0)]
    train = _write(tmp_path / "train.csv", ["text", "label"], rows[:30])
    val = _write(tmp_path / "val.csv", ["text", "label"], rows[30:])
    config = _config(tmp_path, tiny_model_dir, {"train_file": train, "validation_file": val,
                                                "labels": ["negative", "positive"]}, epochs=1)
    assert cli.main(["train", "--config", config]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["info"]["label_names"] == ["negative", "positive"]
    assert cli.main(["export", "--run", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(tmp_path / "run" / "model.safetensors"), val, "--json", "--quiet",
                     "--tokenizer", str(tiny_model_dir)]) == 0
    predicted = [r["label"] for r in json.loads(capsys.readouterr().out)]
    truth = ["positive" if y else "negative" for _, y in rows[30:]]
    assert set(predicted) <= {"negative", "positive"}
    assert sum(p == t for p, t in zip(predicted, truth)) / len(truth) == results["test"]["accuracy"]


def test_integer_ids_and_names_are_told_apart():
    assert L.names_class_ids([0, 1, "1", 0], ["negative", "positive"])
    assert not L.names_class_ids([0, 1, 2], ["negative", "positive"])  # an id past the names: not ids
    assert not L.names_class_ids(["0", "1"], ["0", "1"])  # the names are the labels themselves
    assert not L.names_class_ids(["neg", "pos"], ["neg", "pos"]) and not L.names_class_ids([0, 1], None)
    assert L.id_names([1, "0", "x"], ["negative", "positive"]) == ["positive", "negative", "x"]
