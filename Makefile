# Everything a fresh machine needs: `make demo` and `make test` install first, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extras installed by `make install`; `make install EXTRAS=test` skips DeepSpeed (a ~5-10 min build) and the docs tools.
EXTRAS ?= test,deepspeed,docs
PYTEST_ARGS ?=

.PHONY: install test test-slow demo demo-video bench docs docs-serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, from the pinned versions (served from a local copy on the project machines)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: no slow test collected

demo: install
	$(VENV)/bin/accelerate launch --num_processes 1 --cpu vlsft/train.py --config recipes/demo.yaml --output_dir outputs/demo

# The video demo (recipes/demo_video.yaml): clips of a moving square, generated here, then about two minutes of CPU.
demo-video: install
	$(PY) -m vlsft.testing.demo_video outputs/demo-video-data
	$(VENV)/bin/accelerate launch --num_processes 1 --cpu vlsft/train.py --config recipes/demo_video.yaml --output_dir outputs/demo-video

bench: install
	$(PY) benchmarks/bench.py

# The documentation site (mkdocs.yml, docs/): strict, so a broken link, a page left out of the nav or a docstring
# mkdocstrings cannot read fails the build. Offline: no fonts, social cards or inventories are fetched.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --clean

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf outputs .pytest_cache site
