# ipsecemu — run as root on Debian 12.  `make lab` and `make test` are the two entry points.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := build-essential clang libclang-rt-14-dev libssl-dev python3-dev python3-venv iproute2 iputils-ping \
	tcpdump tshark iperf3 strongswan-charon strongswan-swanctl libcharon-extra-plugins \
	libstrongswan-standard-plugins libstrongswan-extra-plugins frr graphviz
PYTEST_ARGS ?=
LAB ?= netns-labs/er-vwan.yaml
# The lab's own name (its top-level `name:`), so lab-down removes this lab and no one else's.
LAB_NAME ?= $(shell sed -n 's/^name: *\([A-Za-z0-9_.-]*\).*/\1/p' $(LAB) | head -n 1)
BIN_LINK := /usr/local/bin/ipsecemu

.PHONY: deps apt-deps venv build build-asan fuzz fuzz-native test lint bench lab cli-link lab-down capture interop bench-lab bench-macsec clean test-explore

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

# Every fuzz target, FUZZ_SECONDS each (10 targets x 30 s = 5 min by default); fails on the first finding.
fuzz: fuzz-native fuzz-python

# libFuzzer harnesses of the C code (native/fuzz): each runs FUZZ_SECONDS; a finding fails the target
# and leaves its input in native/out/fuzz-findings/.  New coverage goes to native/out/fuzz-work/.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := fuzz_esp fuzz_macsec fuzz_offload fuzz_loop fuzz_mloop
fuzz-native: venv
	@mkdir -p native/out/fuzz-findings
	@for t in $(FUZZ_TARGETS); do \
		bin=$$($(PY) native/build.py --program native/fuzz/$$t.c --variant fuzz) || exit 1; \
		mkdir -p native/out/fuzz-work/$$t; \
		echo "fuzz-native: $$t, $(FUZZ_SECONDS) s"; \
		$$bin -max_total_time=$(FUZZ_SECONDS) -max_len=20000 -print_final_stats=1 \
			-artifact_prefix=native/out/fuzz-findings/$$t- native/out/fuzz-work/$$t native/fuzz/corpus/$$t \
			> native/out/fuzz-work/$$t.log 2>&1; rc=$$?; \
		grep -E 'DONE|stat::number_of_executed_units|stat::average_exec_per_sec' native/out/fuzz-work/$$t.log; \
		if [ $$rc -ne 0 ]; then grep -E 'ERROR|SUMMARY|oracle' native/out/fuzz-work/$$t.log; \
			echo "fuzz-native: $$t found a defect: native/out/fuzz-findings/"; exit 1; fi; \
	done

# ruff, the import-linter contracts of pyproject.toml (layers, sans-I/O cores) and mypy (strict on
# everything but lab/, see [tool.mypy] in pyproject.toml).
lint: venv
	@$(VENV)/bin/ruff check ipsecemu tests native
	@$(VENV)/bin/lint-imports --no-cache
	@$(VENV)/bin/mypy

test: deps build build-asan lint
	$(PY) -m pytest $(PYTEST_ARGS)

# the unit tests with fresh random hypothesis examples (make test draws the same ones every run)
test-explore: venv build
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest tests/unit -q

bench: deps build
	$(PY) -m ipsecemu bench dataplane
	$(PY) -m pytest tests/bench --benchmark-enable -q

lab: deps build cli-link
	$(PY) -m ipsecemu lab up $(LAB) --smoke --default

# The commands `lab up` prints start with `ipsecemu`: link the venv's entry point onto PATH (root only,
# and never over a file that is not our own link).
cli-link: venv
	@if [ "$$(id -u)" = 0 ]; then \
		if [ ! -e $(BIN_LINK) ] || [ -L $(BIN_LINK) ]; then ln -sfn $(CURDIR)/$(VENV)/bin/ipsecemu $(BIN_LINK); \
		else echo "ipsecemu: $(BIN_LINK) exists and is not a link: use $(CURDIR)/$(VENV)/bin/ipsecemu" >&2; fi; \
	else echo "ipsecemu: not root: run the CLI as $(CURDIR)/$(VENV)/bin/ipsecemu" >&2; fi

lab-down: venv
	$(PY) -m ipsecemu lab down $(LAB_NAME)

capture: venv
	$(PY) -m ipsecemu lab capture ce:msee1 --duration 5 -w er-vwan-ce.pcap --keys keys

interop: deps build
	$(PY) -m ipsecemu interop

bench-lab: deps build
	$(PY) -m ipsecemu bench lab

bench-macsec: deps build
	$(PY) -m ipsecemu bench macsec

# Resilience campaigns (issue #13), the long versions: each test prints its figures and progress;
# `make test` runs the same tests short.  Every campaign is bounded (pytest-timeout per test).
# resil1: IKE over lossy ER links, ESP reordering vs the replay window, IKE_SA_INIT flood.
CAMPAIGNS_RESIL1 := tests/system/test_resilience_ike.py tests/system/test_resilience_esp.py \
	tests/system/test_resilience_flood.py
CAMPAIGN_TESTS ?= $(CAMPAIGNS_RESIL1)
.PHONY: campaigns
campaigns: deps build
	IPSECEMU_CAMPAIGN=long $(PY) -m pytest -s -q $(CAMPAIGN_TESTS)

clean:
	rm -rf $(VENV) build native/out ipsecemu/dataplane/_native*.so *.egg-info

# Coverage-guided Python fuzzing (atheris): each harness of tests/fuzz for FUZZ_SECONDS, seeded
# from tests/fuzz/corpus/<target>; new inputs go to build/fuzz/<target>, a finding (exception,
# or an input costing more than 1 s of CPU: tests/fuzz/fuzzlib.py) stops the run, leaves
# build/fuzz/<target>-* and fails the target.  -timeout (wall clock) is only the backstop for a
# hang: a niced harness on a busy box is starved for seconds without any slow input.
FUZZ_SECONDS ?= 30
FUZZ_PY_TARGETS := ike_message ike_endpoint mka pcap_decrypt config_loaders
.PHONY: fuzz-python
fuzz-python: venv
	@set -e; for t in $(FUZZ_PY_TARGETS); do \
		mkdir -p build/fuzz/$$t; echo "fuzz-python: $$t ($(FUZZ_SECONDS) s)"; \
		dict=; test -f tests/fuzz/dicts/$$t.dict && dict=-dict=tests/fuzz/dicts/$$t.dict; \
		nice $(PY) tests/fuzz/fuzz_$$t.py build/fuzz/$$t tests/fuzz/corpus/$$t $$dict -max_total_time=$(FUZZ_SECONDS) \
			-timeout=10 -rss_limit_mb=2048 -artifact_prefix=build/fuzz/$$t- -print_final_stats=1 2>&1 \
			| grep -E '^(#[0-9]+ +(INITED|DONE)|stat::|==[0-9]+== ERROR|=== Uncaught|Traceback|  File|[A-Za-z]+Error)' ; \
		test $${PIPESTATUS[0]} -eq 0 || { echo "fuzz-python: finding in $$t (see build/fuzz/$$t-*)"; exit 1; }; \
	done

# Resilience soak (issue #13), about 15 min: the 10-minute soak (SOAK_SECONDS) with
# Child and IKE rekeys every 30 s under iperf3 + ping, RSS and fds of each gateway sampled every 10 s
# (fails on fd growth or RSS +20 %); 100 Child + 10 IKE rekeys under iperf3 with 0 lost pings;
# the gateway restart drill's re-establish time.  Each prints its figures; make test runs short versions.
SOAK_SECONDS ?= 600
.PHONY: soak
soak: deps build
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_REKEY=30 SOAK_SAMPLE=10 RESIL2_CHILD_REKEYS=100 RESIL2_IKE_REKEYS=10 \
		$(PY) -m pytest -s -q --timeout=$$(( $(SOAK_SECONDS) + 300 )) \
		tests/system/test_resilience_rekey.py tests/system/test_soak.py \
		tests/system/test_lab_drills_vpn.py::test_gateway_restart_rejoins_and_time_is_printed
