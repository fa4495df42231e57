# Two commands for a fresh machine: `make demo` and `make test`. Both are
# idempotent: the virtual environment is built once and reused.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.framecast-installed
# CPU machines get the pinned CPU wheel; set TORCH_SPEC= to keep your own torch.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install --quiet "$(TORCH_SPEC)"; fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/framecast generate --prompt "a red circle moving left on a black background" \
		--frames 48 --out out/demo.mp4

lint: $(STAMP)
	$(VENV)/bin/ruff check engine models streaming export apps bench tests
	$(VENV)/bin/mypy engine models streaming export apps bench

test: lint
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(VENV)/bin/framecast bench

clean:
	rm -rf $(VENV) out
