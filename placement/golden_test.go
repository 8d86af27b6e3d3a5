package placement

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestGolden replays each testdata/*.txt scenario and compares what it prints
// with testdata/*.golden. `go test ./placement -run Golden -update` rewrites
// the goldens.
//
// A scenario is one command a line; '#' starts a comment, blank lines are
// skipped. Values with spaces are Go-quoted: refuse="out of disk".
//
//	ledger ttl=30s size=64     the asker's ledger (none until this line)
//	bid NODE [cpu=F] [mem=F] [running=N] [pending=N] [cap=N]
//	    [healthy=false] [offers=false] [refuse=REASON] [tag=K=V]...
//	                           add NODE's bid, or replace it in place;
//	                           unset fields: 0, healthy, offers the kind
//	unbid NODE                 remove NODE's bid
//	advance DURATION           move the clock forward
//	elect ID [kind=K] [policy=P] [constraint=K=RE]...
//	                           run an election (kind defaults to "python")
//	spawn ID [same as elect]   elect, then reserve the winner in the ledger
//	release ID                 release the reservation of request ID
//	reservations               print the ledger
func TestGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scenarios in testdata")
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".txt")
		t.Run(name, func(t *testing.T) {
			script, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got, err := replay(string(script))
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			golden := strings.TrimSuffix(file, ".txt") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs from %s (run with -update to accept):\n%s", file, golden, lineDiff(string(want), got))
			}
		})
	}
}

// scenario is the state a script acts on.
type scenario struct {
	now    time.Time
	bids   []Bid
	ledger *Ledger
	out    strings.Builder
}

func replay(script string) (string, error) {
	s := &scenario{now: epoch}
	for n, line := range strings.Split(script, "\n") {
		args, err := fields(line)
		if err != nil {
			return "", fmt.Errorf("line %d: %w", n+1, err)
		}
		if len(args) == 0 {
			continue
		}
		fmt.Fprintf(&s.out, "> %s\n", strings.TrimSpace(line))
		if err := s.run(args[0], args[1:]); err != nil {
			return "", fmt.Errorf("line %d: %s: %w", n+1, args[0], err)
		}
		s.out.WriteString("\n")
	}
	return s.out.String(), nil
}

func (s *scenario) run(cmd string, args []string) error {
	switch cmd {
	case "ledger":
		kv, err := keyValues(args, "ttl", "size")
		if err != nil {
			return err
		}
		ttl, err := time.ParseDuration(kv.one("ttl", "30s"))
		if err != nil {
			return err
		}
		size, err := strconv.Atoi(kv.one("size", "1024"))
		if err != nil {
			return err
		}
		s.ledger, err = NewLedger(ttl, size)
		return err
	case "bid":
		if len(args) == 0 {
			return fmt.Errorf("want a node name")
		}
		b, err := parseBid(args[0], args[1:])
		if err != nil {
			return err
		}
		if i := slices.IndexFunc(s.bids, func(x Bid) bool { return x.Node == b.Node }); i >= 0 {
			s.bids[i] = b
		} else {
			s.bids = append(s.bids, b)
		}
	case "unbid":
		if len(args) != 1 {
			return fmt.Errorf("want a node name")
		}
		s.bids = slices.DeleteFunc(s.bids, func(b Bid) bool { return b.Node == args[0] })
	case "advance":
		if len(args) != 1 {
			return fmt.Errorf("want a duration")
		}
		d, err := time.ParseDuration(args[0])
		if err != nil {
			return err
		}
		s.now = s.now.Add(d)
		fmt.Fprintf(&s.out, "now +%v\n", s.now.Sub(epoch))
	case "elect", "spawn":
		if len(args) == 0 {
			return fmt.Errorf("want a request id")
		}
		req, err := parseRequest(args[0], args[1:])
		if err != nil {
			return err
		}
		d, err := Elect(req, s.bids, s.ledger, s.now)
		s.printDecision(d, err)
		if cmd == "spawn" && err == nil {
			if s.ledger == nil {
				return fmt.Errorf("spawn needs a ledger")
			}
			r := s.ledger.Reserve(req.ID, d.Ranked[0].Bid, s.now)
			fmt.Fprintf(&s.out, "reserve %s\n", s.formatReservation(r))
		}
	case "release":
		if len(args) != 1 || s.ledger == nil {
			return fmt.Errorf("want a request id and a ledger")
		}
		fmt.Fprintf(&s.out, "released %v\n", s.ledger.Release(args[0]))
	case "reservations":
		if s.ledger == nil {
			return fmt.Errorf("no ledger")
		}
		fmt.Fprintf(&s.out, "%d reservations\n", s.ledger.Len())
		for _, r := range s.ledger.Reservations() {
			fmt.Fprintf(&s.out, "  %s\n", s.formatReservation(r))
		}
	default:
		return fmt.Errorf("unknown command")
	}
	return nil
}

func (s *scenario) printDecision(d Decision, err error) {
	if err != nil {
		fmt.Fprintf(&s.out, "error: %v\n", err)
	} else {
		fmt.Fprintf(&s.out, "winner %s, runner-up %s\n", d.Winner, or(d.RunnerUp, "none"))
		fmt.Fprintf(&s.out, "reason: %s\n", d.Reason)
	}
	for i, c := range d.Ranked {
		fmt.Fprintf(&s.out, "  %d. %-8s score %6.2f  cpu %5.1f  mem %5.1f  slots %5.1f  interp %d+%d+%d/%d  tie %d\n",
			i+1, c.Bid.Node, c.Score, c.Bid.CPU, c.Bid.Mem, c.Slots,
			c.Bid.Running, c.Bid.Pending, c.Reserved, c.Bid.Capacity, c.TieGroup)
	}
	for _, r := range d.Rejected {
		fmt.Fprintf(&s.out, "  x  %-8s %-10s %s\n", r.Node, r.Rule, r.Reason)
	}
}

func (s *scenario) formatReservation(r Reservation) string {
	return fmt.Sprintf("%s on %s seen %d ahead %d expires +%v", r.RequestID, r.Node, r.Seen, r.Ahead, r.Expires.Sub(epoch))
}

func parseBid(node string, args []string) (Bid, error) {
	b := Bid{Node: node, Healthy: true, OffersKind: true}
	kv, err := keyValues(args, "cpu", "mem", "running", "pending", "cap", "healthy", "offers", "refuse", "tag")
	if err != nil {
		return b, err
	}
	for k, vs := range kv {
		for _, v := range vs {
			switch k {
			case "cpu":
				b.CPU, err = strconv.ParseFloat(v, 64)
			case "mem":
				b.Mem, err = strconv.ParseFloat(v, 64)
			case "running":
				b.Running, err = strconv.Atoi(v)
			case "pending":
				b.Pending, err = strconv.Atoi(v)
			case "cap":
				b.Capacity, err = strconv.Atoi(v)
			case "healthy":
				b.Healthy, err = strconv.ParseBool(v)
			case "offers":
				b.OffersKind, err = strconv.ParseBool(v)
			case "refuse":
				b.Refusal = v
			case "tag":
				tk, tv, ok := strings.Cut(v, "=")
				if !ok {
					return b, fmt.Errorf("tag %q: want key=value", v)
				}
				if b.Tags == nil {
					b.Tags = map[string]string{}
				}
				b.Tags[tk] = tv
			}
			if err != nil {
				return b, fmt.Errorf("%s: %w", k, err)
			}
		}
	}
	return b, nil
}

func parseRequest(id string, args []string) (Request, error) {
	kv, err := keyValues(args, "kind", "policy", "constraint")
	if err != nil {
		return Request{}, err
	}
	req := Request{ID: id, Kind: kv.one("kind", "python"), Policy: Policy(kv.one("policy", ""))}
	for _, v := range kv["constraint"] {
		c, err := ParseConstraint(v)
		if err != nil {
			return req, err
		}
		req.Constraints = append(req.Constraints, c)
	}
	return req, nil
}

type keyValue map[string][]string

func (kv keyValue) one(key, def string) string {
	if vs := kv[key]; len(vs) > 0 {
		return vs[len(vs)-1]
	}
	return def
}

func keyValues(args []string, known ...string) (keyValue, error) {
	kv := keyValue{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || !slices.Contains(known, k) {
			return nil, fmt.Errorf("argument %q: want one of %s as key=value", a, strings.Join(known, ", "))
		}
		kv[k] = append(kv[k], v)
	}
	return kv, nil
}

// fields splits a script line into words; a value after '=' may be a Go
// quoted string, and '#' at the start of a word begins a comment.
func fields(line string) ([]string, error) {
	var out []string
	for {
		line = strings.TrimLeft(line, " \t\r")
		if line == "" || line[0] == '#' {
			return out, nil
		}
		if k, rest, ok := strings.Cut(line, "="); ok && !strings.ContainsAny(k, " \t") && strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return nil, fmt.Errorf("bad quoting in %q", rest)
			}
			v, _ := strconv.Unquote(q)
			out = append(out, k+"="+v)
			line = rest[len(q):]
			continue
		}
		end := strings.IndexAny(line, " \t\r")
		if end < 0 {
			end = len(line)
		}
		out = append(out, line[:end])
		line = line[end:]
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// lineDiff shows the first lines that differ, enough to see what changed.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(w), len(g)) && shown < 10; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want %s\n   got %s\n", i+1, wl, gl)
			shown++
		}
	}
	return b.String()
}
