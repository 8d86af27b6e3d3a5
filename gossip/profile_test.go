package gossip

import (
	"errors"
	"testing"
	"time"
)

// The estimate is memberlist's suspicion timeout plus four probe
// intervals, with the node count's log10 at least 1.
func TestDetectionEstimateFollowsTheProfilesDetector(t *testing.T) {
	for _, c := range []struct {
		profile string
		n       int
		want    time.Duration
	}{
		{"lan", 1000, 16 * time.Second},         // 4 × 3 × 1 s + 4 × 1 s
		{"lan", 5, 8 * time.Second},             // 4 × 1 × 1 s + 4 s: log10 5 counts as 1
		{"fast", 1000, 6500 * time.Millisecond}, // 3 × 3 × 0.5 s + 4 × 0.5 s
		{"fast", 100, 5 * time.Second},          // 3 × 2 × 0.5 s + 2 s
		{"", 100, 5 * time.Second},              // the default profile is fast
		{"wan", 100, 80 * time.Second},          // 6 × 2 × 5 s + 4 × 5 s
	} {
		got, err := DetectionEstimate(c.profile, c.n)
		if err != nil || got != c.want {
			t.Errorf("%q at %d nodes: %v, %v; want %v", c.profile, c.n, got, err, c.want)
		}
	}
	if _, err := DetectionEstimate("lna", 100); !errors.Is(err, ErrUnknownProfile) {
		t.Errorf("an unknown profile: %v, want ErrUnknownProfile", err)
	}
}
