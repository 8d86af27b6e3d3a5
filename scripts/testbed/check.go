package testbed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// Feature is something a bed may need beyond namespaces, veths and a bridge.
type Feature int

const (
	// Filters is nftables in the namespaces: Partition, Cut, Heal and Loss.
	Filters Feature = iota
	// Netem is tc's netem queueing discipline: Delay.
	Netem
)

func (f Feature) String() string {
	switch f {
	case Filters:
		return "filters (nftables)"
	case Netem:
		return "delay (tc netem)"
	}
	return fmt.Sprintf("feature %d", int(f))
}

var checks struct {
	sync.Mutex
	done bool
	base error
	feat map[Feature]error
}

// Check returns nil when this machine can run a bed with the features
// named, or an error wrapping ErrUnsupported that says what is missing and
// how to get it. It probes the kernel in a throwaway namespace once per
// process; the answers are kept.
func Check(features ...Feature) error {
	checks.Lock()
	defer checks.Unlock()
	if !checks.done {
		checks.base, checks.feat = probe()
		checks.done = true
	}
	if checks.base != nil {
		return checks.base
	}
	var errs []error
	for _, f := range features {
		errs = append(errs, checks.feat[f])
	}
	return errors.Join(errs...)
}

func haveFilters() bool { return Check(Filters) == nil }

func unsupported(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(format, args...))
}

// probe tries, inside a namespace of its own, what a bed does: veths, a
// bridge, an nftables table and a netem qdisc.
func probe() (base error, feat map[Feature]error) {
	feat = map[Feature]error{}
	if os.Geteuid() != 0 {
		return unsupported("it needs root to make network namespaces (run the tests as root, e.g. sudo make test)"), nil
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return unsupported("no ip command: install iproute2"), nil
	}
	if err := Sweep(); err != nil {
		return fmt.Errorf("removing what earlier runs left: %w", err), nil
	}
	r, err := reserve()
	if err != nil {
		return err, nil
	}
	defer r.release()
	ns := r.prefix + "-probe"
	if _, err := run(nil, "ip", "netns", "add", ns); err != nil {
		return unsupported("cannot make a network namespace: %v", err), nil
	}
	defer run(nil, "ip", "netns", "del", ns)
	if _, err := run(nil, "ip", "-n", ns, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1"); err != nil {
		return unsupported("the kernel cannot make veth pairs (CONFIG_VETH): %v", err), nil
	}
	if _, err := run(nil, "ip", "-n", ns, "link", "add", "pbr", "type", "bridge"); err != nil {
		return unsupported("the kernel cannot make bridges (CONFIG_BRIDGE): %v", err), nil
	}
	if _, err := run(nil, "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
		return err, nil
	}

	if _, err := exec.LookPath("nft"); err != nil {
		feat[Filters] = unsupported("no nft command for partitions, cuts and loss: install nftables")
	} else if _, err := run(strings.NewReader("table inet probe {\n\tchain c {\n\t\tnumgen random mod 100 < 1 drop\n\t}\n}\n"),
		"ip", "netns", "exec", ns, "nft", "-f", "-"); err != nil {
		feat[Filters] = unsupported("the kernel lacks nftables (CONFIG_NF_TABLES, CONFIG_NFT_NUMGEN): %v", err)
	}

	if _, err := exec.LookPath("tc"); err != nil {
		feat[Netem] = unsupported("no tc command for delay: install iproute2")
	} else if out, err := run(nil, "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"); err != nil {
		if strings.Contains(out, "unknown") {
			feat[Netem] = unsupported("the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM; try modprobe sch_netem) for delay")
		} else {
			feat[Netem] = unsupported("tc netem: %v", err)
		}
	}
	return nil, feat
}
