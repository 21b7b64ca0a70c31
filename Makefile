# Two commands do all the set-up on a fresh machine:  `make demo` (the main job) and `make test`.
VENV       ?= .venv
PYTHON     ?= python3
# torch first, as a pair that imports together (PyPI's torchvision needs its matching torch);
# the CUDA build also runs on CPU. Override on machines that need another pair.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.nnunet-mcc-installed
PYTEST_ARGS ?=

.PHONY: install test demo bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/nnunet-mcc demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# on a CUDA machine: each trainer's loss, epoch time, peak memory and prediction against nnU-Net's (docs/gpu.md);
# the default budget is meant to fit 10 minutes on one H100 (GPU_CHECK_DATASET=brats: give it about 1500)
GPU_CHECK_DIR ?= nnunet_mcc_work/gpu_check
GPU_CHECK_BUDGET ?= 600
GPU_CHECK_DATASET ?= hippocampus
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --device cuda --output $(GPU_CHECK_DIR) --budget-s $(GPU_CHECK_BUDGET) \
		--dataset $(GPU_CHECK_DATASET)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist *.egg-info
