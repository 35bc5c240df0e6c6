"""GLUE TSV loading for every task's column layout, from fixtures written here, and its errors."""

from pathlib import Path

import pytest

from padnet.data.glue import TASKS, GlueTask, get_task, read_tsv, tsv_path
from padnet.errors import UsageError
from tests.helpers import SHARED_DATA

GLUE = SHARED_DATA / "glue"

# Each task: (directory, split file, lines) in the layout download_glue_data.py writes, and the
# (text_a, text_b, label) triples the loader must return.
MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
               "label5\tgold_label")
FIXTURES = {
    "cola": ("CoLA", "train", [
        "gj04\t1\t\tOur friends won't buy this analysis.",
        "gj04\t0\t*\tThey drank the pub.",
    ], [("Our friends won't buy this analysis.", None, 1), ("They drank the pub.", None, 0)]),
    "sst2": ("SST-2", "train", [
        "sentence\tlabel",
        "hide new secretions \t0",
        "a \"charming\" film \t1",
    ], [("hide new secretions ", None, 0), ('a "charming" film ', None, 1)]),
    "mrpc": ("MRPC", "train", [
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        "1\t702876\t702977\tAmrozi accused his brother.\tReferring to him as \"the witness\".",
        "0\t2108705\t2108831\tYucaipa owned Dominick's.\tYucaipa bought Dominick's.",
    ], [("Amrozi accused his brother.", 'Referring to him as "the witness".', 1),
        ("Yucaipa owned Dominick's.", "Yucaipa bought Dominick's.", 0)]),
    "stsb": ("STS-B", "dev", [
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA plane is taking off."
        "\tAn air plane is taking off.\t5.000",
        "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays.\tA woman cooks.\t0.25",
    ], [("A plane is taking off.", "An air plane is taking off.", 5.0), ("A man plays.", "A woman cooks.", 0.25)]),
    "qqp": ("QQP", "dev", [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "201359\t303345\t303346\tWhy are people mean?\tWhy are some people mean?\t1",
        "263843\t69383\t380476\tHow to learn?\tWhere is Paris?\t0",
    ], [("Why are people mean?", "Why are some people mean?", 1), ("How to learn?", "Where is Paris?", 0)]),
    "mnli": ("MNLI", "dev_mismatched", [
        MNLI_HEADER,
        "0\t1\t1e\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe cat sat.\tA cat sat.\tentailment\tentailment\t"
        "neutral\tentailment\tentailment\tentailment",
        "1\t2\t2c\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tIt rains.\tIt is dry.\tcontradiction\tcontradiction\t"
        "contradiction\tcontradiction\tcontradiction\tcontradiction",
        "2\t3\t3n\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tHe ran.\tHe was late.\tneutral\tneutral\t"
        "neutral\tneutral\tneutral\tneutral",
    ], [("The cat sat.", "A cat sat.", 0), ("It rains.", "It is dry.", 2), ("He ran.", "He was late.", 1)]),
    "qnli": ("QNLI", "train", [
        "index\tquestion\tsentence\tlabel",
        "0\tWhen was it built?\tIt was built in 1900.\tentailment",
        "1\tWho won?\tThe sky is blue.\tnot_entailment",
    ], [("When was it built?", "It was built in 1900.", 0), ("Who won?", "The sky is blue.", 1)]),
    "rte": ("RTE", "dev", [
        "index\tsentence1\tsentence2\tlabel",
        "0\tDana Reeve died.\tChristopher Reeve had an accident.\tnot_entailment",
        "1\tYet, we now are discovering.\tWe are discovering.\tentailment",
    ], [("Dana Reeve died.", "Christopher Reeve had an accident.", 1),
        ("Yet, we now are discovering.", "We are discovering.", 0)]),
    "wnli": ("WNLI", "train", [
        "index\tsentence1\tsentence2\tlabel",
        "0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1",
        "1\tJohn couldn't see the stage.\tJohn is short.\t0",
    ], [("I stuck a pin through a carrot.", "The carrot had a hole.", 1),
        ("John couldn't see the stage.", "John is short.", 0)]),
}


def write(root: Path, directory: str, split: str, lines: list[str], newline_at_end: bool = True) -> Path:
    path = root / directory / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""), encoding="utf-8")
    return path


def test_every_glue_task_has_a_fixture():
    assert set(FIXTURES) == set(TASKS)


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_reads_each_task_layout(tmp_path, task):
    directory, split, lines, expected = FIXTURES[task]
    write(tmp_path, directory, split, lines)
    ex = read_tsv(task, split, tmp_path)
    got = list(zip(ex.text_a, ex.text_b or [None] * len(ex), ex.labels))
    assert got == expected
    assert ex.task == task and ex.split == split
    spec = get_task(task)
    for label in ex.labels:  # ids index the label names (classification) or are floats (STS-B)
        assert isinstance(label, float) if spec.is_regression else 0 <= label < spec.num_labels


def test_task_spellings_and_task_directory(tmp_path):
    directory, split, lines, expected = FIXTURES["stsb"]
    write(tmp_path, directory, split, lines)
    for name in ("STS-B", "stsb", "sts-b"):
        assert read_tsv(name, "dev", tmp_path).labels == [5.0, 0.25]
    # The task's own directory works too, and "validation" means dev.
    assert len(read_tsv("stsb", "validation", tmp_path / "STS-B")) == 2


def test_missing_final_newline_and_crlf(tmp_path):
    directory, split, lines, expected = FIXTURES["rte"]
    write(tmp_path, directory, split, [line + "\r" for line in lines], newline_at_end=False)
    ex = read_tsv("rte", split, tmp_path)
    assert ex.labels == [1, 0] and ex.text_b[1] == "We are discovering."


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'squad'.*cola.*rte.*wnli"):
        get_task("squad")


def test_missing_file_says_which_file_and_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        read_tsv("mrpc", "train", tmp_path)
    assert str(tmp_path / "MRPC" / "train.tsv") in str(err.value)
    with pytest.raises(ValueError, match=r"split='dev_mismatched'.*allowed: train, dev"):
        tsv_path("rte", "dev_mismatched", tmp_path)


def test_malformed_row_names_file_and_line(tmp_path):
    directory, split, lines, _ = FIXTURES["rte"]
    bad = lines[:2] + ["1\tonly one sentence"] + lines[2:]
    path = write(tmp_path, directory, split, bad)
    with pytest.raises(ValueError, match=rf"{path}:3: malformed GLUE RTE row: has 2 tab-separated fields"):
        read_tsv("rte", split, tmp_path)
    assert read_tsv("rte", split, tmp_path, on_error="skip").labels == [1, 0]


@pytest.mark.parametrize(
    "task, row, message",
    [
        ("rte", "2\ta\tb\tmaybe", r"label 'maybe' is out of range; allowed: 'entailment', 'not_entailment'"),
        ("sst2", "text\t2", r"label '2' is out of range; allowed: '0', '1'"),
        ("stsb", "2\tg\tf\ty\t0\tn\tn\ta\tb\t7.5", r"score 7.5 is out of range"),
        ("stsb", "2\tg\tf\ty\t0\tn\tn\ta\tb\thigh", r"label 'high' is not a number"),
    ],
)
def test_label_out_of_range(tmp_path, task, row, message):
    directory, split, lines, _ = FIXTURES[task]
    path = write(tmp_path, directory, split, lines + [row])
    with pytest.raises(ValueError, match=rf"{path}:{len(lines) + 1}: .*{message}"):
        read_tsv(task, split, tmp_path)


def test_header_without_the_needed_column(tmp_path):
    write(tmp_path, "QNLI", "dev", ["index\tquestion\tsentence", "0\ta\tb"])
    with pytest.raises(ValueError, match=r"header has no column 'label'"):
        read_tsv("qnli", "dev", tmp_path)


def test_subset_is_seeded_and_fixed(tmp_path):
    directory, split, lines, _ = FIXTURES["mnli"]
    write(tmp_path, directory, split, lines)
    ex = read_tsv("mnli", split, tmp_path)
    a, b = ex.subset(2, seed=3), ex.subset(2, seed=3)
    assert a.text_a == b.text_a and len(a) == 2
    assert ex.subset(10) is ex


@pytest.mark.skipif(not GLUE.is_dir(), reason=f"shared GLUE data not found at {GLUE}")
@pytest.mark.parametrize("task, train_rows, dev_rows", [
    ("rte", 2490, 277), ("mrpc", 3668, 408), ("cola", 8551, 1043), ("stsb", 5749, 1500), ("wnli", 635, 71),
])
def test_shared_glue_data(task, train_rows, dev_rows):
    # Row counts of the original GLUE release (see the data's README).
    assert len(read_tsv(task, "train", GLUE)) == train_rows
    dev = read_tsv(task, "dev", GLUE)
    assert len(dev) == dev_rows
    if task == "mrpc":
        assert sum(dev.labels) == 279  # the BOM header did not eat a column


def test_online_path_maps_the_datasets_columns(monkeypatch):
    # No network in tests: a stand-in for the `datasets` library records what was asked for.
    import sys
    import types

    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return {"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [2, 0]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    from padnet.data.glue import load_glue

    ex = load_glue("MNLI", "dev_mismatched")
    assert calls == [("glue", "mnli", "validation_mismatched")]
    assert (ex.text_a, ex.text_b, ex.labels) == (["p1", "p2"], ["h1", "h2"], [2, 0])


def test_a_task_spec_with_class_names_but_no_tsv_labels_is_refused():
    """Either both label tables (classification) or neither (regression): one alone would read a classification
    task's labels as scores."""
    with pytest.raises(UsageError, match=r"GLUE task 'mine': label_names and tsv_labels are both given"):
        GlueTask("mine", "Mine", "sentence", None, "label", ("no", "yes"), None)
    with pytest.raises(UsageError, match=r"GLUE task 'mine'"):
        GlueTask("mine", "Mine", "sentence", None, "label", None, ("0", "1"))
