package gossip

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/memberlist"
)

// profiles maps a profile name to memberlist's timing and fan-out settings.
// lan, wan and local are memberlist's own.
var profiles = map[string]func() *memberlist.Config{
	"lan":   memberlist.DefaultLANConfig,
	"wan":   memberlist.DefaultWANConfig,
	"local": memberlist.DefaultLocalConfig,
}

// DefaultProfile is the profile used when none is named.
const DefaultProfile = "lan"

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
