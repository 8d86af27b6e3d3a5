package agent

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// scrape reads /metrics: how many series it holds, and the value of one
// (0 when absent).
func scrape(t *testing.T, a *Agent, series string) (int, float64) {
	t.Helper()
	resp, err := http.Get("http://" + a.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, value := 0, 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		n++
		if name, v, ok := strings.Cut(line, " "); ok && name == series {
			value, _ = strconv.ParseFloat(v, 64)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n, value
}

// TestDistinctEventNamesAddNoSeries: serf names a series after each user
// event's name, and the Prometheus sink never forgets one; 1,000 distinct
// names must leave the number of series on /metrics where it was.
func TestDistinctEventNamesAddNoSeries(t *testing.T) {
	a := startAgent(t, "alpha", "127.0.0.1", func(c *Config) { c.HTTPAddr = "127.0.0.1:0" })
	if err := a.Node().UserEvent("warm-up", nil, false); err != nil {
		t.Fatal(err)
	}
	poll(t, "the first event counted", func() bool { _, v := scrape(t, a, "serf_events"); return v >= 1 })
	before, counted := scrape(t, a, "serf_events")
	const names = 1000
	for i := range names {
		if err := a.Node().UserEvent(fmt.Sprintf("distinct-%d", i), nil, false); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, "every event counted", func() bool { _, v := scrape(t, a, "serf_events"); return v >= counted+names })
	after, _ := scrape(t, a, "serf_events")
	t.Logf("measure: /metrics series before %d, after %d distinct event names %d", before, names, after)
	// Other series may come and go a little (a first scrape adds the HTTP
	// counter's path, the runtime its own); a series per name would add
	// a thousand.
	if after > before+5 {
		t.Errorf("/metrics went from %d series to %d after %d distinct event names", before, after, names)
	}
}
