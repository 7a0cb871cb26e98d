# Two entry points, each installs what it needs into .venv first (idempotent; see scripts/install_env.sh).
VENV   := .venv
PYTHON := $(VENV)/bin/python
RUNS   ?= runs

.PHONY: install demo test lint format lock clean

install:
	@bash scripts/install_env.sh

demo: install
	$(VENV)/bin/chexrl run chexrl/configs/demo.yaml --out $(RUNS)/demo

test: install lint
	CHEXRL_TEST=1 $(VENV)/bin/pytest -q --durations=15

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Re-pin the CPU stack after changing dependencies (commit requirements/lock-cpu.txt).
lock: install
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^-e ' > requirements/lock-cpu.txt

clean:
	rm -rf $(RUNS) artifacts .pytest_cache .ruff_cache .hypothesis
