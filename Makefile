# fastntp: build, test and try out.
#
#   make demo    build fastntp and watch a real client get the time from it
#   make test    everything CI runs: deps, vet, race tests, allocation proofs, fuzzing
#   make bench   the Go benchmarks (reply path, loopback throughput)

GO        ?= go
BIN       := bin
FUZZTIME  ?= 10s
# Debian packages the tests run for real: the backend, NTP clients, netns.
TEST_DEPS := chronyd:chrony ntpdig:ntpsec-ntpdig sntp:sntp ip:iproute2

.PHONY: all build demo test deps vet unit fuzz bench clean

all: build

build:
	$(GO) build -o $(BIN)/fastntp ./cmd/fastntp

demo: build
	./deploy/demo.sh $(BIN)/fastntp

# deps installs what the tests need on a fresh Debian machine, and fails
# loudly if it cannot: the tests never skip for a missing tool under CI=true.
deps:
	@missing=""; for pair in $(TEST_DEPS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi
	@for pair in $(TEST_DEPS); do command -v $${pair%%:*} >/dev/null || { echo "missing $${pair%%:*}"; exit 1; }; done

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$unformatted" ]; then echo "not gofmt'ed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# The race detector instruments allocations, so the allocation proofs run in
# a second pass without it.
unit:
	$(GO) test -race -count=1 ./...
	$(GO) test -count=1 -run 'Alloc' ./...

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReply$$' -fuzztime $(FUZZTIME) ./responder
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./responder/ntp
	$(GO) test -run '^$$' -fuzz '^FuzzParseControl$$' -fuzztime $(FUZZTIME) ./batch
	$(GO) test -run '^$$' -fuzz '^FuzzParseAnswer$$' -fuzztime $(FUZZTIME) ./upstream

test: deps vet unit fuzz

bench:
	$(GO) test -run '^$$' -bench . -benchtime 300000x -count 5 ./responder

clean:
	rm -rf $(BIN)
