# crunch-run: the two set-up commands are `make demo` and `make test`.

CARGO ?= cargo
PYTHON ?= python3

.PHONY: all build release engine slurm fuse pyenv demo test lint bench clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# A Docker engine that answers `docker info` (installs and starts one if needed).
engine:
	sh tests/scripts/ensure-docker.sh

# A one-node Slurm (slurmctld + slurmd + munge) for tests/slurm.rs (installs and starts it if needed).
slurm:
	sh tests/scripts/ensure-slurm.sh

# FUSE for arv-mount: Debian's fuse3 and the headers arvados-llfuse builds against, and a
# usable /dev/fuse (installs the packages if needed).
fuse:
	sh tests/scripts/ensure-fuse.sh

# The real Arvados Python SDK, used by tests to read our log collections back, the real
# crunchstat-summary, which must read our crunchstat.txt, and arv-mount (arvados-fuse: the
# FUSE path of collection mounts; its version pinned with the SDK's, and its arvados-llfuse
# built against the FUSE headers `fuse` installs). The stamp depends on this Makefile, so
# adding a package here installs it into an existing venv.
PYENV_PACKAGES = arvados-python-client==3.2.1 arvados-fuse==3.2.1 crunchstat-summary
pyenv: .venv/.installed
.venv/.installed: Makefile
	sh tests/scripts/ensure-fuse.sh
	test -x .venv/bin/python || $(PYTHON) -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check $(PYENV_PACKAGES)
	touch $@

# Run a real container end to end through a local store and show the result.
demo: engine release
	sh tests/scripts/demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Everything: unit, component (fake docker + fake API/Keep), real-engine and Slurm tests.
test: engine slurm fuse pyenv lint
	$(CARGO) test -- --test-threads=4

bench: engine release
	sh bench/run.sh

clean:
	$(CARGO) clean
	rm -rf .venv demo
