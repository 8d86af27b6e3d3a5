package simulation

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"strings"
	"testing"
)

// sampleReport is a small partition run as Run would report it.
func sampleReport() *Report {
	heal := 3.5
	zero := 0
	groups := []GroupRecord{{Name: "side A (3 nodes, with the monitor)", Nodes: 3, members: []int{0, 1, 2}},
		{Name: "side B (2 nodes)", Nodes: 2, members: []int{3, 4}}}
	r := &Report{Nodes: 5, Scenario: ScenarioPartition, Seed: 7, Profile: "lan", LengthS: 10,
		Figures:  Figures{FalseSuspicions: &zero, HealS: &heal, BytesPerNodePerS: 400, WallS: 12, MaxViews: 2},
		Baseline: Figures{HealS: &heal, BytesPerNodePerS: 11, WallS: 12, MaxViews: 1},
		Faults:   []FaultRecord{{AtS: 2, Kind: "partition", Label: "partition 3/2"}, {AtS: 6, Kind: "heal", Label: "heal"}},
		Groups:   groups}
	for i, alive := range [][]int{{5, 5, 5, 5, 5}, {3, 3, 4, 2, 2}, {5, 5, 5, 5, 5}} {
		s := Sample{T: float64(i) * 4, Views: 1 + i%2, Monitor: 5 - i%2*2, alive: alive}
		s.Groups = groupStats(alive, groups)
		r.Timeline = append(r.Timeline, s)
	}
	return r
}

func TestTheJSONReportHoldsTheContractFields(t *testing.T) {
	data, err := json.Marshal(sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	figures := []string{"detection_p50_s", "detection_p99_s", "false_suspicions", "false_failures", "heal_s", "bytes_per_node_per_s", "wall_s"}
	for _, k := range append([]string{"nodes", "scenario", "seed", "profile", "baseline"}, figures...) {
		if _, ok := got[k]; !ok {
			t.Errorf("the report has no %q", k)
		}
	}
	base, _ := got["baseline"].(map[string]any)
	for _, k := range figures {
		if _, ok := base[k]; !ok {
			t.Errorf("the baseline has no %q", k)
		}
	}
	if got["heal_s"] != 3.5 || got["nodes"] != 5.0 || got["detection_p99_s"] != nil {
		t.Errorf("values: heal_s %v nodes %v detection_p99_s %v", got["heal_s"], got["nodes"], got["detection_p99_s"])
	}
}

func TestTheTimelineIsWellFormedSVGNamingTheFaultsAndGroups(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteSVG(&buf, sampleReport()); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(buf.Bytes()))
	for {
		_, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
	}
	for _, want := range []string{"partition 3/2", "heal at 6 s", "side A (3 nodes, with the", "side B (2 nodes)", "heartbeat monitor", "distinct member views"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the picture does not say %q", want)
		}
	}
}

func TestTheTextSummaryPutsBothDetectorsSideBySide(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteText(&buf, sampleReport()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"gossip (lan)", "heartbeat baseline", "heal", "3.50 s", "partition 3/2"} {
		if !strings.Contains(out, want) {
			t.Errorf("the summary does not say %q:\n%s", want, out)
		}
	}
}

// Packets lost at a full receive queue are a node that did not keep up:
// the summary says so when there were any, and is silent when none.
func TestTheTextSummaryNamesPacketsDroppedAtAFullQueue(t *testing.T) {
	var quiet bytes.Buffer
	if err := WriteText(&quiet, sampleReport()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(quiet.String(), "full receive queue") {
		t.Errorf("a run without drops at a full queue mentions them:\n%s", quiet.String())
	}
	r := sampleReport()
	r.FullQueueDropsForming, r.FullQueueDrops = 12, 3
	var buf bytes.Buffer
	if err := WriteText(&buf, r); err != nil {
		t.Fatal(err)
	}
	if want := "packets dropped at a full receive queue: 12 while forming, 3 during the schedule"; !strings.Contains(buf.String(), want) {
		t.Errorf("the summary does not say %q:\n%s", want, buf.String())
	}
}
