# enhrec-wrap: install, test and demo on Debian 12. Targets that change the system need root.
# Installed layout: docs/architecture.md ("Installed layout").

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

REPO      := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
PREFIX    := /opt/enhrec-wrap
VENV      := $(PREFIX)/venv
BINDIR    := /usr/local/bin
CONFDIR   := /etc/enhrec-wrap
TEST_VENV := $(REPO)/.venv
FRESH_CACHE := /var/cache/enhrec-wrap-fresh
PYTEST    := PYTHONSAFEPATH=1 "$(TEST_VENV)/bin/pytest" -q -p no:cacheprovider --import-mode=importlib

# Entry scripts as NAME=MODULE (each module has main()).
ENTRY_SCRIPTS := enhrec-wrap=enhrec_wrap.cli.wrap enhrec=enhrec_wrap.cli.enhrec

.PHONY: help root install chain-key deps test-deps venv entry-scripts config pam uninstall uninstall-kernel install-sshd uninstall-sshd install-forwarder uninstall-forwarder install-collector uninstall-collector test-venv test unit demo bench fresh-check clean

# help: list the targets.
help:
	@echo "make install    install enhrec-wrap and what it needs (root, idempotent)"
	@echo "make uninstall  remove $(PREFIX) and the entry scripts; keep $(CONFDIR) and the logs (root)"
	@echo "make install-sshd    record every SSH login: sudoers rule + sshd drop-in, checked first (root)"
	@echo "make uninstall-sshd  remove that rule and drop-in again (root)"
	@echo "make install-forwarder COLLECTOR=host:port  ship this host's audit log there over RELP (root)"
	@echo "make install-collector PORT=n [ADDRESS=ip]   receive a fleet's audit logs over RELP (root)"
	@echo "make uninstall-forwarder / uninstall-collector  stop and remove either again (root)"
	@echo "make test       install, then run every test against the installed package (root)"
	@echo "make unit       run tests/unit only (no root needed)"
	@echo "make demo       record a session with three audit bypasses and print its events (root)"
	@echo "make bench      run benchmarks/run.py with the installed package (root)"
	@echo "make fresh-check  make demo && make test of the committed tree in a new minimal Debian 12 root (root)"
	@echo "make clean      remove the test venv and build leftovers"

# root: stop early with a clear message when not root.
root:
	@[ "$$(id -u)" -eq 0 ] || { echo "make: this target must run as root (try: sudo make $(MAKECMDGOALS))" >&2; exit 1; }

# install: everything enhrec-wrap needs, then a check that the installed copy imports with BCC.
install: root deps venv entry-scripts config pam chain-key
	@cd / && "$(VENV)/bin/python3" -I -c 'import bcc, enhrec_wrap; print("install: ok, enhrec_wrap", enhrec_wrap.__version__, "from", enhrec_wrap.__file__)'

# chain-key: the audit log's initial chain key (docs/deployment.md, "A fleet"), only when
# `enhrec keygen` made none yet for the configured data_dir; its verification key is printed
# here, once: keep it off the host.
chain-key: root entry-scripts config
	@"$(BINDIR)/enhrec" keygen --if-missing

# deps: Debian packages, merged kernel headers when needed, tracefs.
deps: root
	@bash "$(REPO)/scripts/install-deps.sh" "$(PREFIX)"

# test-deps: the Debian packages of the program and those only the tests and the demo need
# (scripts/install-deps.sh --tests), in one apt-get run.
test-deps: root
	@bash "$(REPO)/scripts/install-deps.sh" --tests "$(PREFIX)"

# venv: the root-owned venv with the tree's current code, not writable by group or others.
venv: root deps
	@bash "$(REPO)/scripts/install-into-venv.sh" "$(VENV)"
	@chown -R root:root "$(PREFIX)"
	@chmod -R u+rwX,go+rX,go-w "$(PREFIX)"

# entry-scripts: /usr/local/bin scripts running the venv's Python in isolated mode.
entry-scripts: root venv
	@$(foreach e,$(ENTRY_SCRIPTS),bash "$(REPO)/scripts/install-entry.sh" $(firstword $(subst =, ,$(e))) $(lastword $(subst =, ,$(e))) "$(VENV)" "$(BINDIR)";)

# config: the default config, only when none is installed yet.
config: root
	@if [ -e "$(CONFDIR)/enhrec.yaml" ]; then \
	    echo "config: kept existing $(CONFDIR)/enhrec.yaml"; \
	else \
	    install -d -m 0755 -o root -g root "$(CONFDIR)"; \
	    install -m 0644 -o root -g root "$(REPO)/conf/enhrec.yaml" "$(CONFDIR)/enhrec.yaml"; \
	    echo "config: installed $(CONFDIR)/enhrec.yaml"; \
	fi

# pam: the PAM service for `enhrec-wrap --user` (docs/deployment.md), only when none is installed
# or it is ours unchanged; a locally edited one is kept.
pam: root
	@if [ ! -e /etc/pam.d/enhrec-wrap ]; then \
	    install -m 0644 -o root -g root "$(REPO)/conf/pam.d/enhrec-wrap" /etc/pam.d/enhrec-wrap; \
	    echo "pam: installed /etc/pam.d/enhrec-wrap"; \
	elif cmp -s "$(REPO)/conf/pam.d/enhrec-wrap" /etc/pam.d/enhrec-wrap; then \
	    echo "pam: /etc/pam.d/enhrec-wrap unchanged"; \
	else \
	    echo "pam: kept the locally changed /etc/pam.d/enhrec-wrap (compare with conf/pam.d/enhrec-wrap)"; \
	fi

# install-sshd: put the wrapper behind sshd; nothing changes unless visudo and sshd -t accept it.
install-sshd: root
	@bash "$(REPO)/scripts/install-sshd.sh" install

# uninstall-sshd: take it away again (the program stays installed).
uninstall-sshd: root
	@bash "$(REPO)/scripts/install-sshd.sh" uninstall

# install-forwarder: a dedicated rsyslogd ships the daily files to COLLECTOR (host:port) over
# RELP; its config is checked with rsyslogd -N1 before anything changes (scripts/install-rsyslog.sh).
# TLS_CA, TLS_CERT, TLS_KEY and TLS_PEER (the collector's certificate name) switch on TLS.
install-forwarder: root
	@ENHREC_VENV="$(VENV)" bash "$(REPO)/scripts/install-rsyslog.sh" forwarder "$(COLLECTOR)"

# install-collector: a dedicated rsyslogd receives on PORT (of ADDRESS, default all) and writes
# each host's lines under the configured data_dir, in the host's layout. TLS as above (TLS_PEER:
# the hosts' certificate names, e.g. *.example.com).
install-collector: root
	@ENHREC_VENV="$(VENV)" bash "$(REPO)/scripts/install-rsyslog.sh" collector "$(PORT)" "$(ADDRESS)"

uninstall-forwarder: root
	@bash "$(REPO)/scripts/install-rsyslog.sh" uninstall forwarder

uninstall-collector: root
	@bash "$(REPO)/scripts/install-rsyslog.sh" uninstall collector

# uninstall: remove the program, its compiled-program cache and its PAM service; the config and
# the audit log stay.
uninstall: root uninstall-kernel
	rm -rf "$(PREFIX)" /var/cache/enhrec-wrap
	rm -f "$(BINDIR)/enhrec-wrap" "$(BINDIR)/enhrec" /etc/pam.d/enhrec-wrap
	@echo "uninstall: kept $(CONFDIR) and the audit log (/var/lib/teleport/log by default); remove them yourself if wanted"

# uninstall-kernel: unload the kernel programs pinned in /sys/fs/bpf/enhrec-wrap (normally
# unloaded by themselves when the host is idle); refuses while a session uses them.
uninstall-kernel: root
	@if [ -n "$(wildcard $(VENV)/lib/python3*/site-packages/enhrec_wrap/kernel/idle.py)" ]; then \
	    cd / && "$(VENV)/bin/python3" -I -m enhrec_wrap.kernel.idle --now; fi
	@rmdir /sys/fs/bpf/enhrec-wrap 2>/dev/null || true

# test-venv: $(TEST_VENV) with pytest and the tree installed non-editable, then proof that it is
# that copy (and not the source tree) which imports: enhrec_wrap.bpf_programs exists only installed.
test-venv:
	@bash "$(REPO)/scripts/install-into-venv.sh" "$(TEST_VENV)" test
	@cd "$(REPO)" && PYTHONSAFEPATH=1 "$(TEST_VENV)/bin/python3" -c 'import sys, enhrec_wrap, enhrec_wrap.bpf_programs; \
	    f = enhrec_wrap.__file__; ok = f.startswith(sys.prefix + "/lib/"); print("test-venv: enhrec_wrap from", f); sys.exit(not ok)'

# test: the whole suite (unit and integration) against the installed program; no tests is a failure.
test: test-deps install test-venv
	cd "$(REPO)" && $(PYTEST) tests || { rc=$$?; [ $$rc -ne 5 ] || echo "make test: pytest collected no tests" >&2; exit $$rc; }

# unit: only tests/unit, which need neither root nor BPF.
unit: test-venv
	cd "$(REPO)" && $(PYTEST) tests/unit || { rc=$$?; [ $$rc -ne 5 ] || echo "make unit: pytest collected no tests" >&2; exit $$rc; }

# demo: one recorded session with three bypasses (base64 | sh, a script file, a command under stty -echo).
demo: test-deps install
	bash "$(REPO)/scripts/demo.sh"

# bench: benchmarks/run.py with the installed package (BENCH_ARGS: its options, e.g. --quick).
bench: install
	cd "$(REPO)" && "$(VENV)/bin/python3" benchmarks/run.py $(BENCH_ARGS)

# fresh-check: proof that a new user's minimal Debian 12 can run `make demo && make test` with
# the committed tree; the debootstrap'd base is cached in $(FRESH_CACHE).
fresh-check: root
	@FRESH_CACHE="$(FRESH_CACHE)" bash "$(REPO)/scripts/fresh-check.sh"

# clean: the test venv and build leftovers in the tree (the installed program stays).
clean:
	rm -rf "$(TEST_VENV)" "$(REPO)/build" "$(REPO)/dist" "$(REPO)"/*.egg-info "$(REPO)/.pytest_cache"
	find "$(REPO)" -name __pycache__ -type d -prune -exec rm -rf {} +
