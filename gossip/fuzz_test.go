package gossip

import (
	"strings"
	"testing"
)

// FuzzParseTags feeds arbitrary tag maps (one k=v per line) to ParseTags:
// tags come from the network, so no value may panic it, and whatever it
// accepts must survive a round trip through Map.
func FuzzParseTags(f *testing.F) {
	f.Add("role=server\ncpu=12.5\nmem=40.0\nni=3\ncap=8\ndc=east")
	f.Add("role=interpreter\nkind=demo\nhost=s1\nrid=abc\nep=127.0.0.1:9000\npid=42")
	f.Add("cpu=NaN\nmem=1e309\nni=-1\npid=99999999999999999999")
	f.Add("role=\ncpu=\n=x")
	f.Fuzz(func(t *testing.T, lines string) {
		m := map[string]string{}
		for _, line := range strings.Split(lines, "\n") {
			k, v, _ := strings.Cut(line, "=")
			m[k] = v
		}
		tags, err := ParseTags(m)
		if err != nil {
			return
		}
		again, err := ParseTags(tags.Map())
		if err != nil {
			t.Fatalf("Map of accepted tags does not parse: %v\n%v", err, tags.Map())
		}
		if again.Role != tags.Role || again.Kind != tags.Kind || again.PID != tags.PID ||
			(tags.Role == RoleServer && (again.Interpreters != tags.Interpreters || again.Capacity != tags.Capacity)) {
			t.Fatalf("round trip changed tags: %+v -> %+v", tags, again)
		}
		_ = EncodedTagSize(m)
	})
}
