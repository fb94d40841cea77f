# Entry points. Every target that runs ROS keeps DDS on loopback with its own domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 42
VENV := .venv/bin

.PHONY: setup test lint demo gpu-check

setup:
	scripts/setup.sh

test: setup
	$(VENV)/ruff check .
	$(VENV)/python -m pytest -q

lint: setup
	$(VENV)/ruff check .

demo: setup
	$(VENV)/python scripts/demo.py

# Every CUDA path in a few minutes, one table; exits 2 without a GPU.
gpu-check: setup
	$(VENV)/python scripts/gpu_check.py
