// Package testbed runs the real agent binary as separate hosts on one Linux
// machine, so that end-to-end tests and `make testbed` see what users see on
// a real network. Each host is a network namespace with its own address on a
// bridge the bed creates (10.231.0.N/24), its own data dir, log and agent
// process. The bed injects a network's faults (partitions by groups, one-way
// cuts, packet loss, delay) and a host's (kill -9, SIGSTOP and SIGCONT,
// restart from the data dir). RunChaos plays a seeded chaos schedule of
// such faults and client operations on five hosts and checks the history
// with package chaos's checker, as the simulation does on whole agents.
//
// It needs root and iproute2; cuts and loss need nftables (nft), delay needs
// a kernel with sch_netem. Check says what is missing.
//
// It must never touch what it did not create: every namespace, link, lock
// and directory it makes is named with a per-run prefix, its addresses live
// only inside its own namespaces (the bridge has none, so nothing is routed
// to or from the machine's real interfaces), and its filters are tables in
// its own namespaces. Close removes all of it; so does SIGINT, SIGTERM or
// SIGHUP while a bed is up, and the next New (or Sweep) removes what a run
// that crashed left behind.
package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrUnsupported is wrapped by Check's errors: the machine cannot run the
// bed (not root, a tool or a kernel feature missing). Tests skip on it.
var ErrUnsupported = errors.New("test bed unsupported here")

// Subnet is the private network of every bed. Each bed has its own bridge,
// and the addresses exist only inside its namespaces, so two beds on one
// machine do not see each other.
const Subnet = "10.231.0.0/24"

// GossipPort and RPCAddr are where each host's agent listens: gossip on the
// host's own address, RPC on the loopback of its namespace (so a plain
// `ip netns exec NS agent members` reaches it).
const (
	GossipPort = 7946
	RPCAddr    = "127.0.0.1:7373"
)

// MaxHosts is the most hosts a bed holds: one /24 minus the network,
// broadcast and a margin.
const MaxHosts = 250

// Config says what bed to build.
type Config struct {
	Hosts   int      // how many hosts, 1 to MaxHosts
	Agent   string   // path of the agent binary
	Profile string   // --profile of every agent; empty keeps the agent's default
	Args    []string // more `agent run` arguments for every host
	// Logf narrates what the bed does (namespaces made, faults applied,
	// processes signalled). Nil is quiet. It may be called concurrently.
	Logf func(format string, args ...any)
}

// Testbed is a set of hosts on one bridge. Its methods may be called from
// several goroutines, but faults are not atomic across hosts: each host's
// rules change in turn, within milliseconds.
type Testbed struct {
	Hosts []*Host // h1 … hN, in order

	cfg    Config
	agent  string // absolute path of the agent binary
	run    *reservation
	bridge string
	dir    string
	key    string // the mesh's gossip encryption key, from agent keygen

	closeOnce sync.Once
	closeErr  error
}

// Host is one namespace with its agent. Its fields are fixed at New.
type Host struct {
	Name    string // node name: h1, h2, …
	NS      string // network namespace
	IP      string // address on the bridge
	Gossip  string // IP:GossipPort
	RPC     string // RPCAddr, inside NS
	DataDir string // --data-dir, kept across restarts
	LogPath string // the agent's stdout and stderr, appended across restarts

	bed  *Testbed
	veth string // the host side of its link, on the bridge

	mu    sync.Mutex
	proc  *process // the running agent, nil when none
	extra []string // extra arguments of the last Start, reused by Restart
}

const (
	namePrefix = "agtb" // every name the bed makes starts with it
	idLen      = 6      // then 6 base-36 characters: pid (5) and a sequence (1)
)

// lockDir holds one flock'ed file per live bed; a lock nobody holds marks a
// run that died. It sits beside /run/netns, on the same tmpfs.
const lockDir = "/run/agent-testbed"

var (
	prefixRE = regexp.MustCompile(`^` + namePrefix + `[0-9a-z]{` + strconv.Itoa(idLen) + `}`)
	nsRE     = regexp.MustCompile(`^` + namePrefix + `[0-9a-z]{` + strconv.Itoa(idLen) + `}-(h[0-9]+|probe)$`)
	linkRE   = regexp.MustCompile(`^` + namePrefix + `[0-9a-z]{` + strconv.Itoa(idLen) + `}(br|v[0-9]+)$`)
	dirRE    = regexp.MustCompile(`^` + namePrefix + `[0-9a-z]{` + strconv.Itoa(idLen) + `}$`)
	seq      atomic.Uint32
)

// New builds the bed: a bridge, cfg.Hosts namespaces linked to it with their
// addresses, filter tables and directories. It starts no agent. It first
// removes what crashed runs left behind. On error nothing of it remains.
func New(cfg Config) (*Testbed, error) {
	if cfg.Hosts < 1 || cfg.Hosts > MaxHosts {
		return nil, fmt.Errorf("%d hosts: a bed holds 1 to %d", cfg.Hosts, MaxHosts)
	}
	agent, err := filepath.Abs(cfg.Agent)
	if err != nil {
		return nil, fmt.Errorf("agent binary %q: %w", cfg.Agent, err)
	}
	if st, err := os.Stat(agent); err != nil || st.IsDir() {
		return nil, fmt.Errorf("no agent binary at %q: run 'make build' or pass its path", cfg.Agent)
	}
	if err := Check(); err != nil {
		return nil, err
	}
	if err := Sweep(); err != nil {
		return nil, fmt.Errorf("removing what earlier runs left: %w", err)
	}
	run, err := reserve()
	if err != nil {
		return nil, err
	}
	b := &Testbed{
		cfg:    cfg,
		agent:  agent,
		run:    run,
		bridge: run.prefix + "br",
		dir:    filepath.Join(os.TempDir(), run.prefix),
	}
	register(b)
	if err := b.build(); err != nil {
		return nil, errors.Join(err, b.Close())
	}
	return b, nil
}

// Prefix is the per-run prefix of every name this bed made.
func (b *Testbed) Prefix() string { return b.run.prefix }

// Bridge is the name of the bed's bridge.
func (b *Testbed) Bridge() string { return b.bridge }

// Agent is the absolute path of the agent binary the bed runs.
func (b *Testbed) Agent() string { return b.agent }

func (b *Testbed) logf(format string, args ...any) {
	if b.cfg.Logf != nil {
		b.cfg.Logf(format, args...)
	}
}

func (b *Testbed) build() error {
	if err := os.Mkdir(b.dir, 0o755); err != nil {
		return err
	}
	// The agent refuses unencrypted gossip on a non-loopback address, as
	// it should: the bed's mesh is encrypted like a real one.
	key, err := run(nil, b.agent, "keygen")
	if err != nil {
		return err
	}
	b.key = strings.TrimSpace(key)
	// No address on the bridge: the machine itself is not on this network,
	// so nothing is routed between it and the namespaces. Bridged frames
	// skip the machine's own iptables, whatever br_netfilter says.
	if _, err := run(nil, "ip", "link", "add", b.bridge, "type", "bridge",
		"nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0"); err != nil {
		return err
	}
	if _, err := run(nil, "ip", "link", "set", b.bridge, "up"); err != nil {
		return err
	}
	for i := 1; i <= b.cfg.Hosts; i++ {
		h := &Host{
			Name: fmt.Sprintf("h%d", i),
			NS:   fmt.Sprintf("%s-h%d", b.run.prefix, i),
			IP:   fmt.Sprintf("10.231.0.%d", i),
			RPC:  RPCAddr,
			bed:  b,
			veth: fmt.Sprintf("%sv%d", b.run.prefix, i),
		}
		h.Gossip = fmt.Sprintf("%s:%d", h.IP, GossipPort)
		h.DataDir = filepath.Join(b.dir, h.Name, "data")
		h.LogPath = filepath.Join(b.dir, h.Name, "agent.log")
		b.Hosts = append(b.Hosts, h)
		if err := os.MkdirAll(h.DataDir, 0o755); err != nil {
			return err
		}
		if err := b.addHost(h); err != nil {
			return err
		}
	}
	b.logf("testbed: %d hosts %s-h1…h%d on bridge %s, %s (files in %s)",
		b.cfg.Hosts, b.run.prefix, b.cfg.Hosts, b.bridge, Subnet, b.dir)
	return nil
}

// baseRules is every host's filter table. The chains start empty: faults
// fill and flush them. Loss applies to the link only, never to loopback,
// where the CLI reaches the agent.
const baseRules = `table inet testbed {
	chain partition { }
	chain cut { }
	chain loss { }
	chain input {
		type filter hook input priority 0; policy accept;
		jump partition
		jump cut
		iifname "eth0" jump loss
	}
	chain output {
		type filter hook output priority 0; policy accept;
		oifname "eth0" jump loss
	}
}
`

func (b *Testbed) addHost(h *Host) error {
	steps := [][]string{
		{"ip", "netns", "add", h.NS},
		// The peer is made inside the namespace: an eth0 in the machine's
		// own namespace would clash with its real interface.
		{"ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
		{"ip", "link", "set", h.veth, "master", b.bridge},
		{"ip", "link", "set", h.veth, "up"},
		{"ip", "-n", h.NS, "addr", "add", h.IP + "/24", "dev", "eth0"},
		{"ip", "-n", h.NS, "link", "set", "eth0", "up"},
		{"ip", "-n", h.NS, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if _, err := run(nil, s[0], s[1:]...); err != nil {
			return err
		}
	}
	if haveFilters() {
		return h.nft(baseRules)
	}
	return nil
}

// nft loads a ruleset script into the host's namespace, atomically for it.
func (h *Host) nft(script string) error {
	if err := Check(Filters); err != nil {
		return err
	}
	_, err := run(strings.NewReader(script), "ip", "netns", "exec", h.NS, "nft", "-f", "-")
	return err
}

// Close stops every process in the bed's namespaces (agents, interpreters,
// monitors), deletes the namespaces, links and files, and releases the
// run's lock. It is idempotent and safe to call from any goroutine.
func (b *Testbed) Close() error {
	b.closeOnce.Do(func() {
		start := time.Now()
		var errs []error
		for _, h := range b.Hosts {
			h.mu.Lock()
			p := h.proc
			h.proc = nil
			h.mu.Unlock()
			if p != nil {
				p.signal(syscall.SIGKILL)
				p.wait(10 * time.Second)
			}
		}
		errs = append(errs, removeRun(b.run.prefix))
		errs = append(errs, b.run.release())
		unregister(b)
		b.closeErr = errors.Join(errs...)
		b.logf("testbed: %s removed in %.1fs", b.run.prefix, time.Since(start).Seconds())
	})
	return b.closeErr
}

// removeRun deletes everything named with a run's prefix: the processes in
// its namespaces, the namespaces, its links and its directory.
func removeRun(prefix string) error {
	var errs []error
	nss, err := namespaces()
	if err != nil {
		errs = append(errs, err)
	}
	for _, ns := range nss {
		if strings.HasPrefix(ns, prefix+"-") {
			errs = append(errs, killAllIn(ns))
			if _, err := run(nil, "ip", "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Deleting a namespace deletes its veth pairs, so usually only the
	// bridge is left; links of a namespace that failed half way may be too.
	links, err := linkNames()
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		if strings.HasPrefix(l, prefix) && linkRE.MatchString(l) {
			// A namespace's veth goes some time after `ip netns del`
			// returns: listed a moment ago, gone now, is what we want.
			if out, err := run(nil, "ip", "link", "del", l); err != nil && !strings.Contains(out, "Cannot find device") && !strings.Contains(out, "No such device") {
				errs = append(errs, err)
			}
		}
	}
	if err := os.RemoveAll(filepath.Join(os.TempDir(), prefix)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killAllIn kills every process in a namespace and waits, bounded, until
// none is left: a namespace with processes outlives its deletion.
func killAllIn(ns string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := run(nil, "ip", "netns", "pids", ns)
		if err != nil {
			return err
		}
		pids := strings.Fields(out)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %s in namespace %s did not die after SIGKILL", strings.Join(pids, " "), ns)
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Sweep removes what runs that died without Close left behind: their
// namespaces (and the processes in them), links, directories and locks. A
// run is dead when no process holds its lock. Live beds, this process's or
// another's, are left alone. New calls it; `scripts/testbed.sh clean` too.
func Sweep() error {
	prefixes := map[string]bool{}
	nss, err := namespaces()
	if err != nil {
		return err
	}
	for _, ns := range nss {
		if nsRE.MatchString(ns) {
			prefixes[prefixRE.FindString(ns)] = true
		}
	}
	links, err := linkNames()
	if err != nil {
		return err
	}
	for _, l := range links {
		if linkRE.MatchString(l) {
			prefixes[prefixRE.FindString(l)] = true
		}
	}
	if ents, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range ents {
			if e.IsDir() && dirRE.MatchString(e.Name()) {
				prefixes[e.Name()] = true
			}
		}
	}
	if ents, err := os.ReadDir(lockDir); err == nil {
		for _, e := range ents {
			if p, ok := strings.CutSuffix(e.Name(), ".lock"); ok && dirRE.MatchString(p) {
				prefixes[p] = true
			}
			if strings.HasPrefix(e.Name(), ".new-") {
				removeIfUnlocked(filepath.Join(lockDir, e.Name()))
			}
		}
	}
	var errs []error
	for p := range prefixes {
		lock, dead, err := claimDead(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !dead {
			continue
		}
		errs = append(errs, removeRun(p))
		if lock != nil {
			errs = append(errs, lock.release())
		}
	}
	return errors.Join(errs...)
}

// removeIfUnlocked removes a lock file that reserve left half made, when
// the process that made it is gone.
func removeIfUnlocked(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
		os.Remove(path)
	}
}

// claimDead takes the lock of a run if nobody holds it (the run is dead). A
// run with resources but no lock file is dead too: the lock is made first
// and removed last.
func claimDead(prefix string) (*reservation, bool, error) {
	f, err := os.OpenFile(filepath.Join(lockDir, prefix+".lock"), os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock of run %s: %w", prefix, err)
	}
	return &reservation{prefix: prefix, lock: f}, true, nil
}

// reservation is a run's prefix and the flock'ed file that says it is alive.
type reservation struct {
	prefix string
	lock   *os.File
}

// reserve picks an unused prefix: pid and a sequence number, and takes its
// lock. The lock file is locked under a private name and then linked into
// place, so that a concurrent Sweep never sees it unlocked.
func reserve() (*reservation, error) {
	pid := strconv.FormatInt(int64(os.Getpid()), 36)
	pid = strings.Repeat("0", max(0, idLen-1-len(pid))) + pid
	var tmp *os.File
	var err error
	for range 3 { // another run's release may remove the empty directory
		if err = os.MkdirAll(lockDir, 0o755); err != nil {
			return nil, err
		}
		if tmp, err = os.CreateTemp(lockDir, ".new-*"); !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if err := syscall.Flock(int(tmp.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		tmp.Close()
		return nil, err
	}
	fmt.Fprintf(tmp, "%d\n", os.Getpid())
	for range 36 {
		prefix := namePrefix + pid + strconv.FormatUint(uint64(seq.Add(1)%36), 36)
		err := os.Link(tmp.Name(), filepath.Join(lockDir, prefix+".lock"))
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			tmp.Close()
			return nil, err
		}
		return &reservation{prefix: prefix, lock: tmp}, nil
	}
	tmp.Close()
	return nil, errors.New("no free test bed prefix: 36 beds of this process are up; close some")
}

func (r *reservation) release() error {
	err := os.Remove(filepath.Join(lockDir, r.prefix+".lock"))
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	err = errors.Join(err, r.lock.Close())
	os.Remove(lockDir) // only when empty: the last bed leaves no trace
	return err
}

func namespaces() ([]string, error) {
	out, err := run(nil, "ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}

func linkNames() ([]string, error) {
	out, err := run(nil, "ip", "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		// "12: name@peer: <FLAGS> …"
		f := strings.SplitN(line, ": ", 3)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(f[1], "@")
		names = append(names, name)
	}
	return names, nil
}

// run runs a command; the error names it and carries its output.
func run(stdin *strings.Reader, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// live holds the beds that are up, so that a signal removes them before
// the process dies of it.
var live struct {
	sync.Mutex
	beds map[*Testbed]bool
	sig  chan os.Signal
}

func register(b *Testbed) {
	live.Lock()
	defer live.Unlock()
	if len(live.beds) == 0 {
		live.beds = map[*Testbed]bool{}
		ch := make(chan os.Signal, 1)
		live.sig = ch
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
		go func() {
			s, ok := <-ch
			if !ok {
				return
			}
			fmt.Fprintf(os.Stderr, "testbed: %v: removing the test beds before exiting\n", s)
			closeAll()
			signal.Reset(s)
			syscall.Kill(os.Getpid(), s.(syscall.Signal))
			time.Sleep(time.Second)
			os.Exit(1)
		}()
	}
	live.beds[b] = true
}

func unregister(b *Testbed) {
	live.Lock()
	defer live.Unlock()
	if !live.beds[b] {
		return
	}
	delete(live.beds, b)
	if len(live.beds) == 0 {
		signal.Stop(live.sig)
		close(live.sig)
	}
}

func closeAll() {
	live.Lock()
	var beds []*Testbed
	for b := range live.beds {
		beds = append(beds, b)
	}
	live.Unlock()
	for _, b := range beds {
		if err := b.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "testbed: %v\n", err)
		}
	}
}
