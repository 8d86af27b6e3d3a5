package gossip

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCheckTag(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		want       string // in the error; empty: accepted
	}{
		{"dc", "east", ""},
		{"dc", "a,b", ""},
		{"dc", "a{1,3}", ""},
		{"zone", "eu west", ""},
		{"city", "Zürich", ""},
		{"empty", "", ""},
		{"", "x", "empty key"},
		{"nl", "a\nFAKE\t1.2.3.4\tserver\tx=y", `"nl": its value "a\nFAKE\t1.2.3.4\tserver\tx=y" holds a newline at byte 1`},
		{"tab", "a\tb", "holds a tab"},
		{"cr", "a\rb", "a carriage return"},
		{"nul", "a\x00b", "U+0000"},
		{"del", "a\x7fb", "U+007F"},
		{"c1", "a\u0085b", "U+0085"},
		{"ls", "a\u2028b", "U+2028"},
		{"bidi", "a\u202eb", "U+202E"},
		{"utf8", "a\xffb", "not valid UTF-8"},
		{"k\nx", "v", `key "k\nx" holds a newline`},
		{"a b", "v", "holds a space"},
		{"a=b", "v", "holds '='"},
		{"k\xff", "v", "not valid UTF-8"},
	} {
		err := CheckTag(tc.key, tc.value)
		if tc.want == "" {
			if err != nil {
				t.Errorf("CheckTag(%q, %q) = %v, want accepted", tc.key, tc.value, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrBadTag) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckTag(%q, %q) = %v, want ErrBadTag containing %q", tc.key, tc.value, err, tc.want)
		}
		if err != nil && strings.ContainsAny(err.Error(), "\n\t\r") {
			t.Errorf("the error itself holds a control character: %q", err.Error())
		}
	}
}

func TestCheckTagsNamesTheFirstBadKeyInOrder(t *testing.T) {
	err := CheckTags(map[string]string{"b": "x\ny", "a": "ok", "c": "\t"})
	if err == nil || !strings.Contains(err.Error(), `"b"`) {
		t.Fatalf("err = %v, want it to name b", err)
	}
}

// FuzzCheckTag: whatever CheckTag accepts fits one line of a listing (a
// member row, an event handler's stdin line), splits back into the same
// key and value at the first '=', and is valid UTF-8; it never panics.
func FuzzCheckTag(f *testing.F) {
	f.Add("dc", "east")
	f.Add("dc", "a,b")
	f.Add("nl", "a\nFAKE\t1.2.3.4\tserver\tx=y")
	f.Add("k=v", "x")
	f.Add("", "")
	f.Add("ls", "\u2028")
	f.Add("k", "\xff")
	f.Fuzz(func(t *testing.T, key, value string) {
		if CheckTag(key, value) != nil {
			return
		}
		line := "node\t127.0.0.1\tserver\t" + key + "=" + value
		if strings.ContainsAny(line[len("node\t127.0.0.1\tserver\t"):], "\n\r\t\v\f\x00\u0085\u2028\u2029") {
			t.Fatalf("accepted tag %q=%q breaks a line", key, value)
		}
		if n := len(strings.Split(line, "\t")); n != 4 {
			t.Fatalf("accepted tag %q=%q makes %d tab fields", key, value, n)
		}
		k, v, _ := strings.Cut(key+"="+value, "=")
		if k != key || v != value {
			t.Fatalf("accepted tag %q=%q reads back as %q=%q", key, value, k, v)
		}
		if !utf8.ValidString(key) || !utf8.ValidString(value) || key == "" || strings.Contains(key, " ") {
			t.Fatalf("accepted tag %q=%q", key, value)
		}
	})
}

func TestOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"east":           "east",
		"eu west, 1":     "eu west, 1",
		"Zürich":         "Zürich",
		"a\nFAKE\tx":     `"a\nFAKE\tx"`,
		"\xff":           `"\xff"`,
		"bidi\u202eevil": `"bidi\u202eevil"`,
	} {
		if got := OneLine(in); got != want {
			t.Errorf("OneLine(%q) = %s, want %s", in, got, want)
		}
	}
}
