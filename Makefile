# The project's commands. Each target does its own set-up (venv, Docker engine, images).
#   make test          lint + pytest + every Molecule scenario (what CI runs)
#   make demo          a disposable local Debian 13 target running AIMA; prints the URL
#   make demo-destroy  remove that target and its data
#   make bench         benchmark figures (see README)
#   make lock          regenerate every lock (requirements.txt files, with hashes) from pyproject.toml
PYTHON ?= python3
VENV := .venv/bin
TESTBED := $(VENV)/python scripts/testbed/build.py
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: test bootstrap images lint pytest molecule demo demo-destroy bench lock

test: bootstrap images lint pytest molecule

bootstrap:
	$(PYTHON) scripts/bootstrap.py --profile test

images:
	$(TESTBED) build
	$(TESTBED) compose-bin .cache/bin/docker-compose

lint:
	$(VENV)/yamllint --strict .
	$(VENV)/ansible-lint --profile production --offline
	$(VENV)/ruff check .

pytest:
	$(VENV)/pytest

molecule:
	$(VENV)/python scripts/molecule_all.py

demo:
	$(PYTHON) scripts/bootstrap.py --profile demo
	$(VENV)/python scripts/demo.py up

demo-destroy:
	$(VENV)/python scripts/demo.py destroy

bench:
	$(PYTHON) scripts/bootstrap.py --profile demo
	$(VENV)/python scripts/bench.py

# Needs PyPI; installs the uv release pinned in pyproject's `lock` group into .cache/lock-tool.
lock:
	$(PYTHON) scripts/lock.py
