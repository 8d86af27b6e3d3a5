// Command walkthrough brings up a test bed of real agents, one per network
// namespace, shows `agent members`, and walks through a partition and its
// heal, printing each change of view as the hosts report it. It needs root;
// scripts/testbed.sh (and `make testbed`) run it. Everything it made is
// removed when it ends, also on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshagent/agent/scripts/testbed"
)

func main() {
	agent := flag.String("agent", "bin/agent", "the agent binary")
	hosts := flag.Int("hosts", 5, "how many hosts (at least 2)")
	profile := flag.String("profile", "local", "gossip profile of every agent: lan, wan or local")
	keep := flag.Bool("keep", false, "after the walkthrough, keep the hosts up until Ctrl-C")
	clean := flag.Bool("clean", false, "only remove what crashed runs left behind, then exit")
	flag.Parse()
	if *clean {
		if err := testbed.Sweep(); err != nil {
			fmt.Fprintln(os.Stderr, "walkthrough:", err)
			os.Exit(1)
		}
		fmt.Println("removed whatever crashed test bed runs had left (namespaces, links, processes, files)")
		return
	}
	if *hosts < 2 {
		fmt.Fprintln(os.Stderr, "walkthrough: -hosts must be at least 2 to make a partition")
		os.Exit(2)
	}
	if err := testbed.Check(testbed.Filters); err != nil {
		fmt.Fprintln(os.Stderr, "walkthrough:", err)
		os.Exit(1)
	}
	if err := walk(*agent, *hosts, *profile, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "walkthrough:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) {
	fmt.Printf("\n== "+format+"\n", args...)
}

func walk(agent string, n int, profile string, keep bool) error {
	b, err := testbed.New(testbed.Config{Hosts: n, Agent: agent, Profile: profile,
		Logf: func(format string, args ...any) { fmt.Printf("   · "+format+"\n", args...) }})
	if err != nil {
		return err
	}
	defer b.Close()

	step("1. %d hosts: each a network namespace with its own address on bridge %s", n, b.Bridge())
	for _, h := range b.Hosts {
		fmt.Printf("   %-4s %-12s namespace %s\n", h.Name, h.IP, h.NS)
	}

	step("2. A real agent on each host (profile %s, gossip encrypted); h2…h%d join h1", profile, n)
	if err := b.StartAll(); err != nil {
		return err
	}
	took, err := waitFor(b, "every agent sees all hosts alive", 60*time.Second, func(v testbed.View) bool {
		return v.All(b.Hosts, b.Hosts, "alive")
	})
	if err != nil {
		return err
	}
	fmt.Printf("   every agent sees %d alive members after %.1fs\n", n, took.Seconds())

	step("3. The mesh as h1 sees it")
	show(b.Hosts[0], "members")

	cut := (n + 1) / 2
	left, right := b.Hosts[:cut], b.Hosts[cut:]
	step("4. Partition %s | %s: every packet between the sides is dropped", names(left), names(right))
	if err := b.Partition(left, right); err != nil {
		return err
	}
	took, err = waitFor(b, "each side to see the other failed", 90*time.Second, func(v testbed.View) bool {
		return v.All(left, right, "failed") && v.All(right, left, "failed")
	})
	if err != nil {
		return err
	}
	fmt.Printf("   each side sees the other failed after %.1fs; each side keeps working on its own\n", took.Seconds())
	show(left[0], "members")
	show(right[0], "members")

	step("5. An election and a spawn asked on each side stay on that side")
	show(left[0], "place", "--kind", "demo")
	show(left[0], "spawn", "--kind", "demo", "--wait")
	show(right[0], "place", "--kind", "demo")
	show(right[0], "spawn", "--kind", "demo", "--wait")

	step("6. Heal: the dropped packets flow again")
	if err := b.Heal(); err != nil {
		return err
	}
	took, err = waitFor(b, "one view everywhere", 120*time.Second, func(v testbed.View) bool {
		return sameAndAlive(v, b.Hosts)
	})
	if err != nil {
		return err
	}
	fmt.Printf("   one view again after %.1fs, with nobody running `agent join`\n", took.Seconds())
	show(b.Hosts[0], "members")
	show(b.Hosts[n-1], "interpreters")

	if keep {
		step("7. The hosts stay up until Ctrl-C. Try, as root:")
		h := b.Hosts[0]
		fmt.Printf("   ip netns exec %s %s members\n", h.NS, b.Agent())
		fmt.Printf("   ip netns exec %s %s monitor\n", b.Hosts[n-1].NS, b.Agent())
		fmt.Printf("   kill -STOP %d   (pause h%d's agent; kill -CONT to resume)\n", b.Hosts[n-1].PID(), n)
		fmt.Printf("   agent logs: %s\n", filepath.Join(filepath.Dir(filepath.Dir(h.LogPath)), "hN", "agent.log"))
		select {} // the test bed removes itself on SIGINT, SIGTERM or SIGHUP
	}
	step("7. Teardown: namespaces, links, processes and files are removed")
	return nil
}

// sameAndAlive reports whether every host lists the same members (servers
// and interpreters), all alive.
func sameAndAlive(v testbed.View, hosts []*testbed.Host) bool {
	want := v[hosts[0].Name]
	for _, h := range hosts {
		got, ok := v[h.Name]
		if !ok || len(got) != len(want) {
			return false
		}
		for name, status := range got {
			if status != "alive" || want[name] != "alive" {
				return false
			}
		}
	}
	return true
}

// waitFor polls every host's view until cond holds, printing each change
// with its time, and returns how long it took.
func waitFor(b *testbed.Testbed, what string, limit time.Duration, cond func(testbed.View) bool) (time.Duration, error) {
	start := time.Now()
	var prev testbed.View
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v := b.View(ctx)
		cancel()
		at := time.Since(start)
		if prev != nil {
			for _, c := range v.Changes(prev) {
				fmt.Printf("   +%5.1fs  %s\n", at.Seconds(), c)
			}
		}
		prev = v
		if cond(v) {
			return at, nil
		}
		if at > limit {
			return at, fmt.Errorf("no %s after %s", what, limit)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// show runs an agent command on h and prints it as a person would see it
// in a terminal on that host.
func show(h *testbed.Host, args ...string) {
	fmt.Printf("\n   $ ip netns exec %s agent %s\n", h.NS, strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := h.CLI(ctx, args...)
	if err != nil {
		fmt.Printf("   (%v)\n", err)
		return
	}
	for _, line := range strings.Split(strings.TrimRight(res.Stdout+res.Stderr, "\n"), "\n") {
		fmt.Println("   " + line)
	}
	if res.Code != 0 {
		fmt.Printf("   (exit code %d)\n", res.Code)
	}
}

func names(hosts []*testbed.Host) string {
	out := make([]string, len(hosts))
	for i, h := range hosts {
		out[i] = h.Name
	}
	return strings.Join(out, " ")
}
