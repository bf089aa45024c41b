# Hikyaku: `make` builds into build/, `make run` starts the embedded cluster,
# `make test` runs every test. Each installs missing Debian packages first.
BUILD ?= build
ASAN_BUILD ?= build-asan
CONFIG ?= deploy/local/hikyaku.yaml
PYTEST ?= /usr/bin/python3 -m pytest

.PHONY: all deps build run test unit integration test-asan clean

all: build

deps:
	@deploy/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j2

run: build
	$(BUILD)/hikyaku all --config $(CONFIG)

unit: build
	cd $(BUILD) && ctest --output-on-failure

integration: build
	HIKYAKU_BIN=$(abspath $(BUILD))/hikyaku $(PYTEST) -q tests/integration

test: unit integration

# A 32 MB quarantine (ASan's default is 256 MB) keeps freed memory from
# masquerading as growth in the tests that bound a node's RSS under load.
test-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DHK_ASAN=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j2
	cd $(ASAN_BUILD) && ctest --output-on-failure
	HIKYAKU_BIN=$(abspath $(ASAN_BUILD))/hikyaku ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=32 $(PYTEST) -q tests/integration

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
