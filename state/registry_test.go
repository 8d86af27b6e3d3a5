package state

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func interp(name, rid string) Interpreter {
	return Interpreter{Name: name, Kind: "demo", RequestID: rid, SupervisorPID: 10, PID: 11,
		Endpoint: "127.0.0.1:9000", Spec: "/d/" + name + "/spec.json", Started: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func TestRegistryKeepsOneInterpreterPerRequest(t *testing.T) {
	r := NewRegistry()
	if err := r.Add(interp("demo-a", "r1")); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(interp("demo-b", "r1")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("second interpreter for one request: %v", err)
	}
	if err := r.Add(interp("demo-a", "r2")); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("second interpreter with one name: %v", err)
	}
	if err := r.Add(Interpreter{Name: "x"}); err == nil {
		t.Fatal("an interpreter without a request id was accepted")
	}
	if got, ok := r.ByRequestID("r1"); !ok || got.Name != "demo-a" {
		t.Fatalf("by request id: %+v %v", got, ok)
	}
	if r.Len() != 1 || r.CountKind("demo") != 1 || r.CountKind("python") != 0 {
		t.Fatalf("len %d", r.Len())
	}
}

func TestRegistryRetainAndRoundTrip(t *testing.T) {
	r := NewRegistry()
	for _, n := range []string{"c", "a", "b"} {
		if err := r.Add(interp(n, "rid-"+n)); err != nil {
			t.Fatal(err)
		}
	}
	data, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalRegistry(data)
	if err != nil || !reflect.DeepEqual(back.List(), r.List()) {
		t.Fatalf("round trip: %v\n%+v\n%+v", err, back.List(), r.List())
	}
	dropped := back.Retain(func(i Interpreter) bool { return i.Name != "b" })
	if len(dropped) != 1 || dropped[0].Name != "b" || back.Len() != 2 {
		t.Fatalf("dropped %+v, left %d", dropped, back.Len())
	}
	if !back.Remove("a") || back.Remove("a") {
		t.Fatal("remove")
	}
}

func TestUnmarshalRegistryRefusesDamage(t *testing.T) {
	for name, data := range map[string]string{
		"not json":       `{"version": 1, "interpreters": [`,
		"newer version":  `{"version": 2, "interpreters": []}`,
		"duplicate name": `{"version": 1, "interpreters": [{"name":"a","rid":"1"},{"name":"a","rid":"2"}]}`,
		"duplicate rid":  `{"version": 1, "interpreters": [{"name":"a","rid":"1"},{"name":"b","rid":"1"}]}`,
	} {
		if _, err := UnmarshalRegistry([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
