# Two commands do all set-up on a fresh machine with Python 3.10+ and make:
#   make demo   - create .venv, install, run the quickstart study
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench browser clean-runs

$(STAMP): pyproject.toml examples/synthdata-vae/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch comes from the package registry (plain `pip install torch torchvision`).
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The example generator plug-in (a VAE), installed as a user's own package would be: it registers `vae`.
	$(BIN)/python -m pip install --quiet -e examples/synthdata-vae
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/synthdata run studies/quickstart.yaml

# The report test opens a page in Debian's chromium; installed here when missing and we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
	  echo "chromium not installed (apt-get install chromium): the browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Benchmarks (not part of the tests): per-stage throughput and ratios against baselines; see bench/README.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run --update-readme
	$(BIN)/python -m bench.study --update-readme
	$(BIN)/python -m bench.startup --update-readme

clean-runs:
	rm -rf mlflow.db mlartifacts
