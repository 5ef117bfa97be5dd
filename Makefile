# dicom-gateway: the two commands an operator needs.
#
#   make run    create .venv, install the package (a real, non-editable install) and
#               run the gateway in the foreground with etc/gateway.yaml
#   make test   install DCMTK, HAProxy and PostgreSQL if missing, create .venv, install '.[test]' and run the
#               whole test suite (unit, adapters, interop) against the source tree
#
# Dependency installation is keyed on setup.cfg/pyproject.toml through stamp files, so a
# second run is quick; the package itself is reinstalled every time so the installed copy
# is never stale.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
CONFIG ?= etc/gateway.yaml

# Root runs apt-get directly; anyone else goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test dcmtk prometheus peers cluster browser install install-test clean

run: install
	$(VENV)/bin/dicom-gateway run -c $(CONFIG)

test: dcmtk prometheus peers cluster browser install-test
	$(PY) -m tests.runner

# DCMTK (echoscu, storescu, storescp) is the independent peer of the interop tests.
dcmtk:
	@command -v storescu >/dev/null 2>&1 || { \
	    $(SUDO) apt-get update && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y dcmtk; }

$(PY):
	$(PYTHON) -m venv $(VENV)

# The other independent peers of the interop matrix and the fault tests: Orthanc (archive and
# source, REST API; its DICOMweb plugin for STOW-RS, issue 17), PixelMed (Java SCU/SCP), strace (F12: order of durable operations) and
# libfaketime (F19: wall-clock jumps under a running gateway), and the openssl command line
# (TLS probes: s_client, certificates), which a minimal Debian does not always have, and curl
# (hand-made STOW-RS requests to the gateway's DICOMweb service, issue 17).
peers:
	@{ command -v Orthanc >/dev/null 2>&1 && [ -f /usr/share/java/pixelmed.jar ] && \
	   [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] && \
	   command -v strace >/dev/null 2>&1 && command -v faketime >/dev/null 2>&1 && \
	   command -v openssl >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; } || { \
	    $(SUDO) apt-get update && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends \
	        orthanc orthanc-dicomweb pixelmed-apps default-jre-headless strace faketime libfaketime openssl curl; }

# Several gateways as one (issue 14): the tests run a real HAProxy in front of the gateways and a
# real PostgreSQL for the shared queue (initdb and postgres under /usr/lib/postgresql/*/bin,
# whatever the version), each stopped by pid.
cluster:
	@{ command -v haproxy >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; } || { \
	    $(SUDO) apt-get update && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends haproxy postgresql; }

# The operator console (issue 18) is tested in headless Chromium driven by Debian's chromedriver.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	    $(SUDO) apt-get update && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core; }

# Prometheus and promtool check the shipped rules and scrape the gateway in the interop tests.
prometheus:
	@{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || { \
	    $(SUDO) apt-get update && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends prometheus; }

# Runtime dependencies plus the build backend, so later reinstalls need no build isolation.
$(VENV)/.stamp-run: setup.cfg pyproject.toml | $(PY)
	$(PIP) install 'setuptools>=61' wheel
	$(PIP) install .
	touch $@

$(VENV)/.stamp-test: setup.cfg pyproject.toml $(VENV)/.stamp-run
	$(PIP) install '.[test]'
	touch $@

# Always refresh the installed copy of the package itself (no dependency resolution).
install: $(VENV)/.stamp-run
	$(PIP) install --quiet --no-deps --no-build-isolation --force-reinstall .

install-test: $(VENV)/.stamp-test
	$(PIP) install --quiet --no-deps --no-build-isolation --force-reinstall .

clean:
	rm -rf build _trial_temp* *.egg-info
