package placement

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestParsePolicy(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Policy
		err  bool
	}{
		{"spread", Spread, false},
		{"binpack", Binpack, false},
		{"", "", true},
		{"Spread", "", true},
		{"least-loaded", "", true},
	} {
		got, err := ParsePolicy(tt.in)
		if tt.err {
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("ParsePolicy(%q) error = %v, want ErrInvalidPolicy", tt.in, err)
				continue
			}
			// The error names the bad value and the valid ones.
			for _, want := range []string{`"` + tt.in + `"`, `"spread"`, `"binpack"`} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("ParsePolicy(%q) error %q does not mention %s", tt.in, err, want)
				}
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePolicy(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseConstraint(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    Constraint
		errText string // empty: must parse
	}{
		{in: "zone=eu-.*", want: Constraint{Key: "zone", Pattern: "eu-.*"}},
		{in: "zone=", want: Constraint{Key: "zone", Pattern: ""}},
		{in: "expr=a=b", want: Constraint{Key: "expr", Pattern: "a=b"}},
		{in: "gpu=(a100|h100)", want: Constraint{Key: "gpu", Pattern: "(a100|h100)"}},
		{in: "zone", errText: "no '='"},
		{in: "", errText: "no '='"},
		{in: "=eu", errText: "empty tag key"},
		{in: "zone=(eu", errText: "RE2 regular expression"},
		{in: "zone=*", errText: "RE2 regular expression"},
	} {
		got, err := ParseConstraint(tt.in)
		if tt.errText != "" {
			if !errors.Is(err, ErrInvalidConstraint) || !strings.Contains(err.Error(), tt.errText) ||
				!strings.Contains(err.Error(), `"`+tt.in+`"`) {
				t.Errorf("ParseConstraint(%q) error = %v; want ErrInvalidConstraint naming the value and %q", tt.in, err, tt.errText)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseConstraint(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestConstraint_IsAnchored(t *testing.T) {
	for _, tt := range []struct {
		pattern, value string
		want           bool
	}{
		{"eu", "eu", true},
		{"eu", "eu-west", false},
		{"eu", "xeu", false},
		{"eu-.*", "eu-west", true},
		{"a|ab", "ab", true}, // leftmost-first would stop at "a"
		{"a|b", "ab", false},
		{"", "", true},
		{"", "x", false},
		{`\Qa.b`, "a.b", true}, // quotes to the end; wrapping in ^(?:…)$ would break it
		{`\Qa.b`, "axb", false},
		{"(?i)EU", "eu", true},
	} {
		m, err := Constraint{Key: "k", Pattern: tt.pattern}.compile()
		if err != nil {
			t.Fatal(err)
		}
		if got := m.matches(tt.value); got != tt.want {
			t.Errorf("pattern %q on %q = %v, want %v", tt.pattern, tt.value, got, tt.want)
		}
	}
}

func FuzzParseConstraint(f *testing.F) {
	for _, s := range []string{"zone=eu-.*", "k=", "=v", "k", "a=b=c", "k=(", `k=\Qx`, "k=a|ab", "k=(?i)x", "k=[[:alpha:]]+"} {
		f.Add(s, "eu-west")
	}
	f.Fuzz(func(t *testing.T, s, value string) {
		c, err := ParseConstraint(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidConstraint) {
				t.Fatalf("ParseConstraint(%q) error %v does not wrap ErrInvalidConstraint", s, err)
			}
			return
		}
		if c.Key == "" || strings.Contains(c.Key, "=") {
			t.Fatalf("ParseConstraint(%q) key %q", s, c.Key)
		}
		if c.String() != s {
			t.Fatalf("ParseConstraint(%q).String() = %q", s, c.String())
		}
		if again, err := ParseConstraint(c.String()); err != nil || again != c {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
		m, err := c.compile()
		if err != nil {
			t.Fatalf("parsed constraint %q does not compile: %v", s, err)
		}
		// Agrees with the textbook anchoring wherever that is sound.
		if strings.Contains(c.Pattern, `\Q`) {
			return
		}
		anchored, err := regexp.Compile("^(?:" + c.Pattern + ")$")
		if err != nil {
			t.Fatalf("pattern %q compiles alone but not anchored: %v", c.Pattern, err)
		}
		for _, v := range []string{value, c.Key, c.Pattern, ""} {
			if got, want := m.matches(v), anchored.MatchString(v); got != want {
				t.Fatalf("pattern %q on %q: matches = %v, anchored regexp = %v", c.Pattern, v, got, want)
			}
		}
	})
}
