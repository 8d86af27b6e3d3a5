# The agent's build, test and demo entry points. `make help` lists them.
GO       ?= go
BIN      := bin/agent
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/meshagent/agent/agent.Version=$(VERSION)
PKGS     := ./...

.DEFAULT_GOAL := help
.PHONY: help build deb test check bench scale pgo demo testbed chaos chaos-sim fmt clean fuzz jupyter jupyter-uninstall

# Fuzz targets, package:Function. `make fuzz` runs each for FUZZTIME.
FUZZTIME ?= 60s
FUZZ_TARGETS := ./agent/rpc:FuzzServerInput ./gossip:FuzzParseTags ./gossip:FuzzCheckTag ./bidding:FuzzDecodeBid \
	./agent/interp:FuzzSpawnOrder ./agent:FuzzConfigFile ./agent/interp:FuzzLoadKinds ./placement:FuzzParseConstraint ./agent:FuzzCheckNodeName ./chaos:FuzzCheck

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## build bin/agent
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) .

# The Debian package: the binary, the systemd unit, /etc/agent.d and the
# maintainer scripts (packaging/), built with dpkg-deb into dist/.
deb: ## build dist/agent_<version>_<arch>.deb (dpkg-deb; install with apt install ./dist/agent_*.deb)
	GO=$(GO) ./scripts/mkdeb.sh dist $(VERSION)

test: ## run every test (root-only tests skip, saying why, unless run as root)
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 20m $(PKGS)

check: ## vet, formatting, go mod tidy, import rules and the race detector
	$(GO) vet $(PKGS)
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod or go.sum is not tidy: run go mod tidy"; $(GO) mod tidy -diff; exit 1; }
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) test -count=1 -run 'TestImportRules|TestPurePackagesReadNoClock|TestEveryPackageHasADoc' .
	$(GO) test -race -count=1 -timeout 25m $(PKGS)

bench: ## run the benchmarks; prints a table and writes bench.json
	$(GO) run ./scripts/benchreport -out bench.json -- $(PKGS)

# The simulation at scale, in virtual time: SEEDS runs per scenario (seeds
# 1…SEEDS); SCALE picks the sizes, a regexp (2000 runs the crash at 2,000
# nodes: 23 minutes and 6.3 GB on 2 cores).
SEEDS ?= 1
SCALE ?= 300|1000
scale: ## opt-in: the simulation at 300 and 1,000 nodes in virtual time (SCALE=2000: 2,000 nodes, about 7 GB); a table and scale.json, about 40 minutes a seed on 2 cores
	SIM_LARGE=1 SIM_HUGE=1 GOFLAGS=-pgo=$(CURDIR)/default.pgo $(GO) run ./scripts/benchreport -out scale.json -bench 'BenchmarkScenario/N=($(SCALE))/' -benchtime $(SEEDS)x -timeout 6h -- ./simulation/

# The agent is built with default.pgo (profile-guided optimization; `go
# build` finds it in the main package's directory), as is the simulation
# at scale above. It is the CPU profile of the mesh's own work; regenerate
# it when the gossip code or its libraries change.
pgo: ## regenerate default.pgo, the profile the agent is built with, from a 500-node partition and crash (about 3 minutes)
	GO=$(GO) ./scripts/pgo.sh

demo: build ## start a 3-agent mesh on loopback, on free ports (or ADDRS, BASE_PORT); Ctrl-C (or DURATION=30s) stops it
	AGENT_BIN=$(CURDIR)/$(BIN) ./scripts/demo.sh

fuzz: ## run every fuzz target for FUZZTIME each (default 60s; CI uses 10s)
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "== $$fn ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
	done

testbed: build ## as root: 5 agents in network namespaces, members, a partition and its heal (KEEP=1 keeps them up)
	AGENT_BIN=$(CURDIR)/$(BIN) ./scripts/testbed.sh

# The chaos checker on real processes: SEED's schedule of faults and client
# operations for DURATION on five hosts in network namespaces, checked by
# chaos.Check; it exits non-zero on a violation. FAULTS restricts the
# faults (e.g. partition,crash-host), HISTORY=FILE keeps the history, V=1
# narrates each step.
chaos: build ## as root: a seeded chaos run on the test bed, checked for the rules under faults (SEED=1 DURATION=3m)
	$(GO) run ./scripts/testbed/chaosrun -agent $(CURDIR)/$(BIN) -seed $(or $(SEED),1) -duration $(or $(DURATION),3m) \
		-faults '$(FAULTS)' $(if $(HISTORY),-history $(HISTORY)) $(if $(V),-v)

# The chaos checker on whole agents in the simulation, in virtual time:
# CHAOS_SEEDS seeds from 1, each a CHAOS_DURATION schedule of random faults
# and client operations on 5 to 9 agents, every rule checked over its history.
CHAOS_SEEDS ?= 200
CHAOS_DURATION ?= 3m
chaos-sim: build ## the chaos checker on whole agents in the simulation (CHAOS_SEEDS=200 CHAOS_DURATION=3m; about 2 minutes on 2 cores)
	$(BIN) simulate --scenario chaos --seed 1 --seeds $(CHAOS_SEEDS) --duration $(CHAOS_DURATION) $(if $(OUT),--out $(OUT))

jupyter: ## install the mesh kernel provisioner and the mesh-python3 kernelspec for Debian's jupyter_client (as root)
	./contrib/jupyter/install.sh

jupyter-uninstall: ## remove what make jupyter installed
	./contrib/jupyter/install.sh --uninstall

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

clean: ## remove build output
	rm -rf bin dist bench.json scale.json
