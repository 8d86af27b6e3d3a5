package gossip

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// profiles maps a profile name to memberlist's timing and fan-out settings.
// lan, wan and local are memberlist's own.
var profiles = map[string]func() *memberlist.Config{
	"lan":   memberlist.DefaultLANConfig,
	"wan":   memberlist.DefaultWANConfig,
	"local": memberlist.DefaultLocalConfig,
	"fast":  fastConfig,
}

// fastConfig is lan with a quicker failure detector and a wider fan-out,
// chosen from the simulation (agent simulate; docs/design-mesh.md, "The fast profile").
// At 100 nodes, seed 1: crash detection p99 3.9 s against lan's 10.8 s;
// false failures 0 at 0%, 5% and 15% loss, as lan; 605 bytes per node per
// second against lan's 419 (790 against 455 at 5% loss); place decision
// p99 362 ms against lan's 1013 ms. Partitions heal through the heal
// prober (heal.go), in either profile.
func fastConfig() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	// Probing twice as often finds a dead node sooner and is most of the
	// added bytes; 250 ms is still hundreds of LAN round trips.
	c.ProbeInterval = 500 * time.Millisecond
	c.ProbeTimeout = 250 * time.Millisecond
	// The suspicion timeout is SuspicionMult × log10(N) × ProbeInterval:
	// 3 s at 100 nodes (lan: 8 s). Lifeguard still stretches it up to six
	// times for a suspicion nobody confirms, which is what loss causes.
	c.SuspicionMult = 3
	// The verdict spreads in half the time; gossip is sent only when there
	// is news, so a quiet mesh pays nothing for it.
	c.GossipInterval = 100 * time.Millisecond
	// News goes to six peers a round (lan: three). Each node still sends
	// each message RetransmitMult × log10(N) times in all, so the bytes do
	// not grow; the message just reaches everyone in fewer rounds. A place
	// query reaches 100 servers in about three rounds instead of five, which
	// is what brings the decision's p99 under 0.5 s. Eight peers added a
	// fifth to the bytes at 15% loss and two false failures there.
	c.GossipNodes = 6
	// A faster detector fails the far side of a partition sooner. Gossiping
	// to the dead for a minute (lan: 30 s) carries the refutations that a
	// heal join sets off to the other side; with 30 s a few nodes still
	// held a stale view 70 s after a heal, waiting for push/pull.
	c.GossipToTheDeadTime = time.Minute
	return c
}

// DefaultProfile is the profile used when none is named: fast, because at
// 100 nodes lan detects a crash more slowly (p99 10.8 s) than the 9 s
// heartbeat timeout this agent replaces, and cannot decide a placement in
// under a second; fast does both (3.9 s, 362 ms) for 1.4 to 1.7 times
// lan's few hundred bytes per second. lan remains for serf's numbers.
const DefaultProfile = "fast"

// DetectionEstimate is how long the profile's failure detector should take
// to fail a crashed member of an n-member mesh: memberlist's suspicion
// timeout (SuspicionMult × log10 n probe intervals, with log10 n at least
// 1) plus four probe intervals, for the probe round that starts the
// suspicion and the gossip of the verdict. Lifeguard lengthens a suspicion
// that nobody confirms, up to SuspicionMaxTimeoutMult times, as loss does;
// the estimate leaves that out. At 1,000 nodes: fast 6.5 s (measured p99
// 5.6 to 7.7 s over five seeds, docs/scale.md), lan 16 s (13.6 s).
func DetectionEstimate(profile string, n int) (time.Duration, error) {
	c, err := profileConfig(profile)
	if err != nil {
		return 0, err
	}
	scale := max(1, math.Log10(float64(n)))
	return time.Duration((float64(c.SuspicionMult)*scale + 4) * float64(c.ProbeInterval)), nil
}

// Profiles lists the profile names, sorted.
func Profiles() []string {
	names := make([]string, 0, len(profiles))
	for n := range profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ErrUnknownProfile is returned for a profile name that does not exist.
var ErrUnknownProfile = fmt.Errorf("unknown profile")

// CheckProfile returns ErrUnknownProfile, listing the valid names, when name
// is not a profile.
func CheckProfile(name string) error {
	if _, ok := profiles[name]; !ok {
		return fmt.Errorf("%w %q: use one of %s", ErrUnknownProfile, name, strings.Join(Profiles(), ", "))
	}
	return nil
}

func profileConfig(name string) (*memberlist.Config, error) {
	if name == "" {
		name = DefaultProfile
	}
	if err := CheckProfile(name); err != nil {
		return nil, err
	}
	return profiles[name](), nil
}
