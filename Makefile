# fastntp: build, test and try out.
#
#   make demo    build fastntp and watch a real client get the time from it
#   make test    everything CI runs: deps, vet, race tests, allocation proofs, fuzzing
#   make bench   the Go benchmarks (reply path, loopback throughput)
#   make deb     the Debian packages, for amd64 and arm64, in dist/

GO        ?= go
BIN       := bin
# Every date in a package is the last commit's (reproducible builds).
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
# The version every build and package is stamped with, from the last v* tag
# and the commits since (deploy/version explains the form). It does not
# depend on Go's VCS stamping, which GOFLAGS=-buildvcs=false turns off.
VERSION   ?= $(shell deploy/version)
LDFLAGS   := -X main.version=$(VERSION)
# Each fuzz target runs for a number of executions, about five seconds'
# worth here (CI's whole run stays near ten minutes), rather than for a
# time: with a -fuzztime duration, Go 1.26's
# fuzzing coordinator can fail a target with "context deadline exceeded" as
# the time runs out (golang/go#75804, fixed in Go 1.27). FUZZTIME, if set,
# replaces every budget (FUZZTIME=5m make fuzz for a longer run).
fuzztime = $(or $(FUZZTIME),$(1))
# bench-check's margins (see bench-check below and docs/benchmarking.md).
BENCH_MIN_PEAK_VS_C          ?= 0.7
BENCH_MAX_CPU_VS_C           ?= 1.8
BENCH_MIN_VS_CHRONYD         ?= 1.25
BENCH_MAX_TX_P99_VS_CHRONYD  ?= 2
BENCH_MAX_TX_P50_VS_CHRONYD  ?= 1
BENCH_MAX_VS_RATELIMITED     ?= 2
BENCH_MIN_CPU_VS_RATELIMITED ?= 0.6
# The share of CPU 1 each server gets: 0.25 makes this machine a slower
# one, where every target peaks under 100,000/s.
BENCH_QUOTA                  ?= 0.5
# Debian packages the tests run for real: the backend (chrony), NTP clients
# written apart from fastntp (ntpsec-ntpdig, python3-ntplib; chronyd -Q is
# the third), network namespaces and their devices (iproute2, ethtool, and
# procps for the raw rig's NAPI thread), NAT
# in a namespace (nftables), and Prometheus (a server scraping fastntp,
# promtool for the alert rules).
TEST_DEPS := chrony ntpsec-ntpdig python3-ntplib iproute2 ethtool procps nftables prometheus
# The demo needs chrony for its backend and its client (chronyd -Q).
DEMO_DEPS := chrony
# What the kernel programs (responder/kernel/*.c) are built with: clang and
# llvm-strip, and libbpf's headers. Debian 12's, so that the objects
# committed are the bytes their source builds to here and in CI.
KERNEL_DEPS := clang llvm libbpf-dev

.PHONY: all build deb deb-check demo test FORCE deps vet layering generate generate-check unit alerts fuzz mutants mutants-ci mutants-upstream mutants-responder mutants-batch bench bench-check bench-check-raw bench-check-xdp clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/fastntp ./cmd/fastntp-bench

demo: build
	.ci/apt-install $(DEMO_DEPS)
	./deploy/demo.sh $(BIN)/fastntp

# deps installs what the tests need on a fresh Debian machine, and fails
# loudly if it cannot: the tests never skip for a missing tool under CI=true.
# .ci/apt-install leaves out recommended packages and waits for apt's lock.
deps:
	@.ci/apt-install $(TEST_DEPS)

vet: layering
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$unformatted" ]; then echo "not gofmt'ed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod or go.sum is not tidy: run go mod tidy"; exit 1; }

# generate rebuilds the kernel programs' objects and their Go bindings with
# bpf2go (a tool of go.mod's, at its cilium/ebpf version). They are
# committed, so that building fastntp needs no C compiler.
generate:
	@.ci/apt-install $(KERNEL_DEPS)
	$(GO) generate ./responder/kernel

# generate-check fails when the committed objects are not what their source
# builds to: a source changed without make generate, or a build that is no
# longer reproducible.
generate-check: generate
	@git diff --exit-code --stat -- responder/kernel || { echo "responder/kernel: the committed objects differ from what the C source builds to; run make generate and commit"; exit 1; }

# layering checks that imports flow one way: the wire format and the
# batch I/O import nothing of fastntp's above them, and the plotting library
# reaches only the bench command, not the server's packages or their tests.
layering:
	@up=$$($(GO) list -deps ./internal/ntp ./batch ./upstream ./responder/egress ./responder/xdp ./responder/kernel | grep -E 'fastntp/(responder$$|bench|cmd)' || true); \
		if [ -n "$$up" ]; then echo "layering: the lower packages import $$up"; exit 1; fi
	@plot=$$($(GO) list -deps -test ./responder/... ./upstream/... ./batch/... ./internal/... ./bench/... | grep '^gonum.org/' || true); \
		if [ -n "$$plot" ]; then echo "layering: the plotting library reaches the server's tests: $$plot"; exit 1; fi

# The race detector instruments allocations, so the allocation proofs run in
# a second pass without it.
unit:
	$(GO) test -race -count=1 ./...
	$(GO) test -count=1 -run 'Alloc' ./...

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReply$$' -fuzztime $(call fuzztime,80000x) ./responder
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(call fuzztime,400000x) ./internal/ntp
	$(GO) test -run '^$$' -fuzz '^FuzzParseControl$$' -fuzztime $(call fuzztime,250000x) ./batch
	$(GO) test -run '^$$' -fuzz '^FuzzParseAnswer$$' -fuzztime $(call fuzztime,80000x) ./upstream
	$(GO) test -run '^$$' -fuzz '^FuzzParsers$$' -fuzztime $(call fuzztime,50000x) ./bench
	$(GO) test -run '^$$' -fuzz '^FuzzParseNetwork$$' -fuzztime $(call fuzztime,30000x) ./cmd/fastntp
	$(GO) test -run '^$$' -fuzz '^FuzzProgram$$' -fuzztime $(call fuzztime,50000x) ./responder/xdp
	$(GO) test -run '^$$' -fuzz '^FuzzNestedU32$$' -fuzztime $(call fuzztime,20000x) ./responder/xdp

# The alert rules an operator drops into Prometheus, against their tests.
alerts:
	promtool test rules deploy/fastntp-alerts_test.yml
	promtool check config deploy/prometheus.yml

# Mutation testing with gremlins: each package's tests must kill the
# mutants (one operator changed at a time) it makes of the package's code.
# Each run fails below its floor in .ci/gremlins/, the triaged score of
# docs/testing.md rounded down. make mutants takes about 25 minutes; CI
# runs mutants-ci. -count=1: go test's cache would make the unmutated run,
# by which gremlins times the mutated ones, far too short.
GREMLINS = GOFLAGS='-count=1 $(GREMLINS_FLAGS)' $(GO) run github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0 unleash
# responder's tests that take seconds each are skipped per mutant; the
# mutants only they kill are listed in docs/testing.md.
mutants-responder: GREMLINS_FLAGS = -skip=TestRateLimitAgainstChronyd|TestStampCheck|TestTAIOffsetChange

mutants: mutants-ci mutants-upstream mutants-responder mutants-batch

mutants-ci:
	$(GREMLINS) --config .ci/gremlins/ntp.yaml ./internal/ntp
mutants-upstream:
	$(GREMLINS) --config .ci/gremlins/upstream.yaml ./upstream
mutants-responder:
	$(GREMLINS) --config .ci/gremlins/responder.yaml ./responder
mutants-batch:
	$(GREMLINS) --config .ci/gremlins/batch.yaml ./batch

test: deps vet generate-check unit alerts fuzz mutants-ci deb-check

# deb-check builds the packages and proves them on this machine (as root):
# lintian, then apt install, --version, the unit, the manual page, chronyd
# reading the snippet, remove and purge leaving nothing behind.
deb-check: deb
	.ci/deb-check $(foreach arch,$(DEB_ARCHES),$(DIST)/fastntp_$(VERSION)_$(arch).deb)

bench:
	$(GO) test -run '^$$' -bench . -benchtime 300000x -count 5 ./responder

clean:
	rm -rf $(BIN) $(DIST)

# deb builds fastntp_VERSION_ARCH.deb for each of DEB_ARCHES with nfpm, a
# Go program (run at a fixed version, like gremlins) that needs no Debian
# toolchain: static binaries, cross-built; the manual page, rendered from
# the flags --help prints; the copyright file, with the licence of every
# module linked in; a changelog naming the commit. Every date in the
# package is the last commit's, so that a rebuild gives the same bytes.
DIST       := dist
DEB_ARCHES := amd64 arm64
NFPM       := $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
STAGE      := $(DIST)/stage
deb: $(addprefix deb-,$(DEB_ARCHES))

# The architectures share the staging directory that
# deploy/debian/nfpm.yaml names, and so are built one after the other.
.NOTPARALLEL:

# The manual page is the same for every architecture.
$(DIST)/fastntp.8.gz: FORCE
	mkdir -p $(DIST)
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) test -count=1 -ldflags '$(LDFLAGS)' -run '^TestManPage$$' ./cmd/fastntp -args -man-page $(CURDIR)/$(DIST)/fastntp.8
	gzip -9nf $(DIST)/fastntp.8

deb-%: $(DIST)/fastntp.8.gz
	rm -rf $(STAGE) && mkdir -p $(STAGE)
	CGO_ENABLED=0 GOOS=linux GOARCH=$* $(GO) build -trimpath -ldflags '$(LDFLAGS) -s -w' -o $(STAGE)/ ./cmd/fastntp ./cmd/fastntp-bench
	cp $(DIST)/fastntp.8.gz $(STAGE)/
	GOOS=linux GOARCH=$* deploy/debian/copyright.sh ./cmd/fastntp ./cmd/fastntp-bench > $(STAGE)/copyright
	printf 'fastntp (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
		'$(VERSION)' "$$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
		"$$(sed -n 's/^maintainer: //p' deploy/debian/nfpm.yaml)" "$$(date -R -u -d @$(SOURCE_DATE_EPOCH))" \
		| gzip -9n > $(STAGE)/changelog.gz
	VERSION='$(VERSION)' DEB_ARCH=$* SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(NFPM) package --config deploy/debian/nfpm.yaml --packager deb --target $(DIST)/

FORCE:

# bench-check is CI's throughput and accuracy regression check: fastntp as
# shipped, stamping at the device, against itself with rate limiting and
# access rules and unbatched, the C reference responder
# (bench/testdata/ntpresp.c, recvmmsg/sendmmsg and nothing else) and
# chronyd, each server pinned to CPU 1 with a share of it (a cgroup quota)
# so that the servers, not the generator on CPU 0, saturate, all in a
# network namespace of its own. The ramp starts below the slowest target's
# peak on any machine this project runs on. After each ramp every server
# holds 20,000 requests/s and half and 90% of fastntp's peak, for CPU per
# reply and transmit-timestamp error. It fails only when fastntp falls below
# the margins, chosen from measurements (docs/benchmarking.md): fastntp's
# peak must be at least halfway from its unbatched self's to C's, which
# holds where batching saves much and where it saves little, and fails
# for a system call per request.
BENCH_FASTNTP = $(CURDIR)/$(BIN)/fastntp -a 127.0.0.1:{port} -6 0 -s {addr:chronyd} --stats-interval 0
# Rate limiting and 100 deny rules, with a limit the generator's clients
# stay under: every request is checked, and answered.
BENCH_RATELIMIT = --ratelimit-interval -19 --ratelimit-burst 255 $(foreach i,$(shell seq 0 99),--deny 10.$(i).0.0/16)
BENCH_C       = $(CURDIR)/$(BIN)/ntpresp -a 127.0.0.1 -p {port} -t 1 -b 64 -k
bench-check: build $(BIN)/ntpresp
	mkdir -p bench-results
	.ci/in-netns $(BIN)/fastntp-bench compare --timeout 8m --rounds 3 \
		--start 10000 --multiplier 1.3 --max 600000 --step 1s \
		--point 20000 --point 50% --point 90% \
		--bench-cpus 0 --target-cpus 1 --target-cpu-quota $(BENCH_QUOTA) \
		--target 'fastntp=exec:$(BENCH_FASTNTP) --transmit-stamps device' \
		--target 'ratelimited=exec:$(BENCH_FASTNTP) $(BENCH_RATELIMIT)' \
		--target 'unbatched=exec:$(BENCH_FASTNTP) --batch-size 1' \
		--target 'c=exec:$(BENCH_C)' \
		--target 'chronyd=chronyd' \
		--require 'peak>=$(BENCH_MIN_PEAK_VS_C)*c' \
		--require 'peak>=0.5*c+0.5*unbatched' \
		--require 'cpu@20000<=$(BENCH_MAX_CPU_VS_C)*c' \
		--require 'peak>=$(BENCH_MIN_VS_CHRONYD)*chronyd' \
		--require 'peak<=$(BENCH_MAX_VS_RATELIMITED)*ratelimited' \
		--require 'cpu@50%>=$(BENCH_MIN_CPU_VS_RATELIMITED)*ratelimited' \
		--require 'txp99@50%<=$(BENCH_MAX_TX_P99_VS_CHRONYD)*chronyd' \
		--require 'txp99@90%<=$(BENCH_MAX_TX_P99_VS_CHRONYD)*chronyd' \
		--require 'txp50@50%<=$(BENCH_MAX_TX_P50_VS_CHRONYD)*chronyd' \
		--require 'txp50@90%<=$(BENCH_MAX_TX_P50_VS_CHRONYD)*chronyd' \
		--json-out bench-results/bench-check.json --plot bench-results/bench-check.png
	$(MAKE) --no-print-directory bench-check-raw

# bench-check-raw measures fastntp against the C responder with the raw-frame
# generator, from 65,536 client addresses, across the veth pair of .ci/in-rig
# (the generator on CPU 0; the servers, and the device's receive path, on
# CPU 1, whole). Its ramp offers more than the socket generator can from one
# core here (about 230,000/s): it ends where a server saturates. It fails
# when fastntp's peak falls below BENCH_RAW_MIN_PEAK_VS_C of C's, or when
# everything CPU 1 does per reply at 100,000/s, softirq included, exceeds
# BENCH_RAW_MAX_SERVING_CPU_VS_C times C's.
BENCH_RAW_MIN_PEAK_VS_C        ?= 0.7
BENCH_RAW_MAX_SERVING_CPU_VS_C ?= 1.5
BENCH_RAW_FASTNTP = $(CURDIR)/$(BIN)/fastntp -a {host}:{port} -6 0 -s {addr:chronyd} --stats-interval 0
bench-check-raw: build $(BIN)/ntpresp
	mkdir -p bench-results
	.ci/in-rig 0 1 $(BIN)/fastntp-bench compare --timeout 5m --rounds 3 \
		--interface rig0 --target-netns fastntp-rig-server --target-host 198.19.0.2 \
		--start 225000 --multiplier 1.5 --max 1000000 --step 1s --point 100000 \
		--bench-cpus 0 --target-cpus 1 \
		--target 'fastntp=exec:$(BENCH_RAW_FASTNTP)' \
		--target 'c=exec:$(CURDIR)/$(BIN)/ntpresp -a {host} -p {port} -t 1 -b 64 -k' \
		--target 'chronyd=chronyd' \
		--require 'peak>=$(BENCH_RAW_MIN_PEAK_VS_C)*c' \
		--require 'servingcpu@100000<=$(BENCH_RAW_MAX_SERVING_CPU_VS_C)*c' \
		--json-out bench-results/bench-check-raw.json
	$(MAKE) --no-print-directory bench-check-xdp

# bench-check-xdp measures fastntp's XDP fast path (--xdp rig1) against the
# C responder and chronyd across the same rig, with rig1's receive path in
# its NAPI thread on CPU 1 (RIG_RECEIVE=napi), where the program runs. The
# first run receives the replies on CPU 0, in rig0's own NAPI thread
# (RIG_XDP=thread), so that CPU 1 counts the serving alone: it fails when
# fastntp's peak falls below BENCH_XDP_MIN_PEAK_VS_C of C's (it answers all
# the generator sends here, 1.8 to 4 times C's peak: while the generator is
# the limit the check is unresolved, and it bites when a regression makes
# the program saturate first), or when its CPU 1 time per reply exceeds
# BENCH_XDP_MAX_SERVING_CPU_VS_C times C's at 150,000/s (measured 0.26 to
# 0.55) or C's own at 20,000/s. The second receives the replies
# on CPU 1 right after they leave (RIG_XDP=softirq): no CPU wakes up
# between a reply's send and its capture, so that the transmit stamps are
# measured rather than the rig; it fails when fastntp's median error at
# 20,000/s exceeds BENCH_XDP_MAX_TX_P50_VS_CHRONYD times chronyd's.
BENCH_XDP_MIN_PEAK_VS_C         ?= 1.8
BENCH_XDP_MAX_SERVING_CPU_VS_C  ?= 0.75
BENCH_XDP_MAX_TX_P50_VS_CHRONYD ?= 1
BENCH_XDP = --interface rig0 --xdp-peer --source-mac 02:00:00:00:00:fe \
	--target-netns fastntp-rig-server --target-host 198.19.0.2 --bench-cpus 0 --target-cpus 1 \
	--target 'fastntp-xdp=exec:$(BENCH_RAW_FASTNTP) --xdp rig1' \
	--target 'c=exec:$(CURDIR)/$(BIN)/ntpresp -a {host} -p {port} -t 1 -b 64 -k' \
	--target 'chronyd=chronyd'
bench-check-xdp: build $(BIN)/ntpresp
	mkdir -p bench-results
	RIG_RECEIVE=napi RIG_XDP=thread .ci/in-rig 0 1 $(BIN)/fastntp-bench compare --timeout 5m --rounds 2 \
		--start 150000 --multiplier 1.5 --max 1000000 --step 1s --point 20000 --point 150000 $(BENCH_XDP) \
		--require 'peak>=$(BENCH_XDP_MIN_PEAK_VS_C)*c' \
		--require 'servingcpu@150000<=$(BENCH_XDP_MAX_SERVING_CPU_VS_C)*c' \
		--require 'servingcpu@20000<=1*c' \
		--json-out bench-results/bench-check-xdp.json
	RIG_RECEIVE=napi RIG_XDP=softirq .ci/in-rig 0 1 $(BIN)/fastntp-bench compare --timeout 5m --rounds 1 \
		--start 20000 --max 20000 --step 1s --point 20000 $(BENCH_XDP) \
		--require 'txp50@20000<=$(BENCH_XDP_MAX_TX_P50_VS_CHRONYD)*chronyd' \
		--json-out bench-results/bench-check-xdp-stamps.json

# The C reference responder, built from its source in the tree.
$(BIN)/ntpresp: bench/testdata/ntpresp.c
	@command -v cc >/dev/null || { echo "bench-check needs a C compiler (cc) to build the reference responder $<"; exit 1; }
	@mkdir -p $(BIN)
	cc -O2 -Wall -o $@ $< -lpthread
