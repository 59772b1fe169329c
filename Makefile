# facesearch: the two set-up commands are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export FACESEARCH_VENV := $(VENV)

.PHONY: run test lint format bench protos venv clean

venv:
	@scripts/bootstrap.sh

## Start the facesearch services on localhost with embedded defaults (Ctrl-C stops them).
run: venv
	$(VENV)/bin/facesearch up

## Check the style (ruff lint and format), then run the whole test suite.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

## Style checks alone; `make format` fixes what can be fixed.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## Run the benchmarks; results are written under bench/results/.
## (The search benchmark at 1M points: $(PY) -m bench.search_latency --points 1000000, about an hour.)
bench: venv
	$(PY) -m bench.detector_throughput
	$(PY) -m bench.detector_backends
	$(PY) -m bench.rotated_photos
	$(PY) -m bench.embedder_throughput
	$(PY) -m bench.search_latency --points 100000
	$(PY) -m bench.gateway_end_to_end
	$(PY) -m bench.load_test
	$(PY) -m bench.threshold_calibration
	$(PY) -m bench.crop_geometry
	$(PY) -m bench.clustering --sizes 10000 100000
	$(PY) -m bench.backfill_throughput
	$(PY) -m bench.recognition_evaluation
	$(PY) -m bench.recognition_evaluation --weights dlib

## Regenerate the Python code for protos/ (committed; a test fails when it is stale).
protos: venv
	$(PY) -m scripts.generate_protos

clean:
	rm -rf $(VENV) .pytest_cache
