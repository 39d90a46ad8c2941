# Two commands do all set-up on a fresh machine with Python 3.10+ and make:
#   make demo   - create .venv, install, run the quickstart study
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean-runs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch comes from the package registry (plain `pip install torch torchvision`).
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/synthdata run studies/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

clean-runs:
	rm -rf mlflow.db mlartifacts
