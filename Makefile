# The two commands a newcomer needs (see README): `make demo` and `make test`.
# Both create .venv and install the project with its test tools on first use.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install --progress-bar on -e '.[test]'
	touch $(STAMP)

.PHONY: install demo test bench deploy-smoke
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dae demo

test: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/dae bench --json runs/bench.json

# docker compose --profile cpu really built, started, checked end to end and taken down, on a local
# Docker engine (started if none answers) and without a container registry: docs/deploy.md.
# Not part of `make test`, which never needs Docker.
deploy-smoke:
	bash deploy/offline/smoke.sh
