# Two set-up-free entry points: `make demo` (the main job) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kgdiff-installed

.PHONY: demo test lint install

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: synthetic city -> urban KG -> TuckER -> KGDiff training -> evaluation on unseen nodes.
# It (re)writes demo_output/.
DEMO_ARGS ?= --max_train_steps 1000 --checkpointing_steps 500 --validation_steps 500

demo: $(STAMP)
	$(VENV)/bin/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no scripts/train.py --dataset synthetic-city --preset cpu-small \
		--output_dir demo_output --overwrite_output_dir --final_evaluation $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src scripts tests bench
