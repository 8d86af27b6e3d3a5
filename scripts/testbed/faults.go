package testbed

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The network faults are nftables rules in each host's own table (see
// baseRules): a dropped packet vanishes at the receiver, with no error at
// the sender, as on a real network whose switch or cable fails.

// Partition splits the hosts into groups that cannot reach each other, in
// either direction. Hosts that no group names form one more group. It
// replaces the partition in force; one-way cuts and loss stay.
func (b *Testbed) Partition(groups ...[]*Host) error {
	side := map[*Host]int{}
	for g, hosts := range groups {
		for _, h := range hosts {
			if _, dup := side[h]; dup {
				return fmt.Errorf("%s is in two groups of the partition: name each host once", h.Name)
			}
			side[h] = g + 1 // 0: the group of the hosts not named
		}
	}
	var errs []error
	for _, h := range b.Hosts {
		var drop []*Host
		for _, o := range b.Hosts {
			if side[o] != side[h] {
				drop = append(drop, o)
			}
		}
		errs = append(errs, h.nft("flush chain inet testbed partition\n"+dropFrom("partition", drop)))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var names []string
	for _, g := range groups {
		names = append(names, hostNames(g))
	}
	b.logf("testbed: partition %s", strings.Join(names, " | "))
	return nil
}

// Cut drops every packet from each host of from to each host of to; the
// other direction keeps working. Cuts add up until Heal.
func (b *Testbed) Cut(from, to []*Host) error {
	var errs []error
	for _, t := range to {
		var drop []*Host
		for _, f := range from {
			if f != t {
				drop = append(drop, f)
			}
		}
		errs = append(errs, t.nft(dropFrom("cut", drop)))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	b.logf("testbed: one-way cut %s → %s (the other direction works)", hostNames(from), hostNames(to))
	return nil
}

// Heal ends every partition and cut. Loss and delay stay.
func (b *Testbed) Heal() error {
	var errs []error
	for _, h := range b.Hosts {
		errs = append(errs, h.nft("flush chain inet testbed partition\nflush chain inet testbed cut\n"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	b.logf("testbed: healed: every partition and cut removed")
	return nil
}

// Loss makes h's link lose a fraction (0 to 1) of the packets it sends and
// of those it receives, each drawn at random; 0 ends the loss. Loopback
// traffic (the CLI to its agent) is spared.
func (b *Testbed) Loss(h *Host, fraction float64) error {
	if !(fraction >= 0 && fraction <= 1) {
		return fmt.Errorf("loss %v is not a fraction: use a value from 0 to 1", fraction)
	}
	script := "flush chain inet testbed loss\n"
	if n := int(math.Round(fraction * 10000)); n > 0 {
		script += fmt.Sprintf("add rule inet testbed loss numgen random mod 10000 < %d counter drop\n", n)
	}
	if err := h.nft(script); err != nil {
		return err
	}
	b.logf("testbed: %s: %g%% loss each way", h.Name, fraction*100)
	return nil
}

// Delay holds every packet to and from h for d more (tc netem on both ends
// of its link); 0 ends it. It needs the Netem feature, which Check reports.
func (b *Testbed) Delay(h *Host, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("delay %s is negative", d)
	}
	if err := Check(Netem); err != nil {
		return err
	}
	ends := [][]string{{"ip", "netns", "exec", h.NS, "tc"}, {"tc"}}
	devs := []string{"eth0", h.veth}
	for i, tc := range ends {
		var args []string
		if d == 0 {
			args = append(tc, "qdisc", "del", "dev", devs[i], "root")
		} else {
			args = append(tc, "qdisc", "replace", "dev", devs[i], "root", "netem",
				"delay", fmt.Sprintf("%dus", d.Microseconds()))
		}
		if out, err := run(nil, args[0], args[1:]...); err != nil && !(d == 0 && strings.Contains(out, "handle of zero")) {
			return err
		}
	}
	b.logf("testbed: %s: delay %s each way", h.Name, d)
	return nil
}

var counterRE = regexp.MustCompile(`counter packets ([0-9]+)`)

// Dropped is how many packets the rules in force at h (partition, cuts,
// loss) have dropped since they were set: a check that a fault bit.
func (b *Testbed) Dropped(h *Host) (int, error) {
	if err := Check(Filters); err != nil {
		return 0, err
	}
	out, err := run(nil, "ip", "netns", "exec", h.NS, "nft", "list", "table", "inet", "testbed")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range counterRE.FindAllStringSubmatch(out, -1) {
		c, _ := strconv.Atoi(m[1])
		n += c
	}
	return n, nil
}

func dropFrom(chain string, hosts []*Host) string {
	if len(hosts) == 0 {
		return ""
	}
	ips := make([]string, len(hosts))
	for i, h := range hosts {
		ips[i] = h.IP
	}
	return fmt.Sprintf("add rule inet testbed %s ip saddr { %s } counter drop\n", chain, strings.Join(ips, ", "))
}

func hostNames(hosts []*Host) string {
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	return strings.Join(names, " ")
}
