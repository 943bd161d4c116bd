# ddpm_lab: `make train` runs the main job, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install train ldm video test test-fast lint bench bench-gpu clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## make .venv and install ddpm_lab with its dev extra

train: install  ## the main job: DDPM on the embedded digits data (experiment=digits_ddpm)
	$(BIN)/ddpm-train experiment=digits_ddpm $(ARGS)

ldm: install  ## latent diffusion, both stages: the shapes VAE, then text-to-image in its latent space
	$(BIN)/ddpm-train experiment=shapes_vae $(ARGS)
	$(BIN)/ddpm-train experiment=shapes_ldm $(ARGS)

video: install  ## latent text-to-video, both stages: the Wan-style video VAE, then flow matching in its latents
	$(BIN)/ddpm-train experiment=moving_shapes_vae $(ARGS)
	$(BIN)/ddpm-train experiment=moving_shapes_ldm $(ARGS)

TEST_WORKERS ?= 2

test: install  ## the whole test suite (CPU, TEST_WORKERS=2 processes)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope $(ARGS)

test-fast: install  ## the tests not marked slow
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not slow" $(ARGS)

lint: install  ## ruff
	$(BIN)/ruff check ddpm_lab tests benchmarks

bench: install  ## the benchmark scripts (tables + JSON in outputs/bench)
	$(BIN)/python benchmarks/train_step.py --out outputs/bench/train_step.json
	$(BIN)/python benchmarks/train_step.py --net diffusers_unet2d --out outputs/bench/train_step_diffusers.json
	$(BIN)/python benchmarks/sampling.py --out outputs/bench/sampling.json
	$(BIN)/python benchmarks/video_judge.py --out outputs/bench/video_judge.json
	$(BIN)/python benchmarks/video_train_step.py --out outputs/bench/video_train_step.json

bench-gpu: install  ## the paper's CIFAR-10 network on the local GPU: speed, overhead, mnist_ddpm + FD (~9.5 min)
	$(BIN)/python benchmarks/gpu.py --out outputs/bench/gpu $(ARGS)

clean:  ## remove the venv and run outputs
	rm -rf $(VENV) outputs/*/ .pytest_cache
