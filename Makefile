# Entry points. Every target that runs ROS keeps DDS on loopback with its own domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 42
VENV := .venv/bin

.PHONY: setup test lint demo gpu-check

setup:
	scripts/setup.sh

# pytest with two workers, a test file each at a time (module fixtures stay whole), each in its own ROS
# domain (conftest): half the tests wait on DDS or on a node process, so 2 cores do both at once.
test: setup
	$(VENV)/ruff check .
	$(VENV)/python -m pytest -q -n 2 --dist loadfile

lint: setup
	$(VENV)/ruff check .

demo: setup
	$(VENV)/python scripts/demo.py

# Every CUDA path in a few minutes, one table; exits 2 without a GPU.
gpu-check: setup
	$(VENV)/python scripts/gpu_check.py
