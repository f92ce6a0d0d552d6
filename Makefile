# ipsecemu — run as root on Debian 12.  `make lab` and `make test` are the two entry points.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := build-essential clang libssl-dev python3-dev python3-venv iproute2 iputils-ping \
	tcpdump tshark iperf3 strongswan-charon strongswan-swanctl libcharon-extra-plugins \
	libstrongswan-standard-plugins libstrongswan-extra-plugins
PYTEST_ARGS ?=
LAB ?= netns-labs/er-vwan.yaml

.PHONY: deps apt-deps venv build build-asan test lint bench lab lab-down capture interop bench-lab bench-macsec clean

deps: apt-deps venv

# Installs only what is missing, and says nothing when nothing is.
apt-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "ipsecemu: missing packages ($$missing) and not root: run 'sudo make deps'" >&2; exit 1; fi; \
		echo "ipsecemu: installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

build: venv
	@$(PY) native/build.py

build-asan: venv
	@$(PY) native/build.py --asan

lint: venv
	@$(VENV)/bin/ruff check ipsecemu tests native

test: deps build build-asan lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: deps build
	$(PY) -m ipsecemu bench dataplane
	$(PY) -m pytest tests/bench --benchmark-enable -q

lab: deps build
	$(PY) -m ipsecemu lab up $(LAB) --smoke

lab-down: venv
	$(PY) -m ipsecemu lab down --all

capture: venv
	$(PY) -m ipsecemu lab capture ce:msee1 --duration 5 -w er-vwan-ce.pcap --keys keys

interop: deps build
	$(PY) -m ipsecemu interop

bench-lab: deps build
	$(PY) -m ipsecemu bench lab

bench-macsec: deps build
	$(PY) -m ipsecemu bench macsec

clean:
	rm -rf $(VENV) build native/out ipsecemu/dataplane/_native*.so *.egg-info
