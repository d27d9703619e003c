# The two commands of the README: `make demo` (the main job) and `make test`.
# Both run scripts/setup.sh first, which is idempotent and quick once done.
.PHONY: setup demo test lint format

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/trustvision train configs/train/mnist_cnn.yaml
	.venv/bin/trustvision compact run configs/compact/mnist_demo.yaml
	.venv/bin/trustvision robust demo configs/robust/demo_mnist.yaml
	.venv/bin/trustvision fed run configs/fed/fmnist_lt_cpu.yaml algorithm=fedavg rounds=10 local_epochs=1 runs_dir=runs/demo-fed
	.venv/bin/trustvision fed run configs/fed/fmnist_lt_cpu.yaml rounds=10 local_epochs=1 runs_dir=runs/demo-fed
	.venv/bin/trustvision fed compare runs/demo-fed

# pytest runs one worker per core (pytest-xdist); a test file stays on one worker, so its
# module fixtures run once. The 15 slowest tests are listed, to watch the 10-minute budget.
test: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
	.venv/bin/mypy
	.venv/bin/lint-imports
	.venv/bin/pytest -q -n auto --dist loadfile --durations=15

lint:
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/mypy

format:
	.venv/bin/ruff format src tests benchmarks
	.venv/bin/ruff check --fix src tests benchmarks
