package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshagent/agent/agent/interp"
)

// TestCheckKindIsTheInterpretersFileRule: --kind refuses exactly the names
// an --interpreters file refuses (one rule, agent/interp's), saying what is
// wrong and giving an example.
func TestCheckKindIsTheInterpretersFileRule(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{
		"python3", "ipy-kernel_2", "A", "_", "-x", strings.Repeat("k", 32),
		"", strings.Repeat("k", 33), strings.Repeat("k", 2000), "a/b", "a b", "kérnel", "a\nb", "..", "a.b", "ä",
	} {
		data, err := json.Marshal(map[string]any{name: map[string]any{"command": []string{"/bin/sh"}}})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "kinds.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, fileErr := interp.LoadKinds(path)
		cliErr := checkKind(name)
		if (fileErr == nil) != (cliErr == nil) {
			t.Errorf("kind %q: an interpreters file says %v, --kind says %v", name, fileErr, cliErr)
			continue
		}
		if cliErr != nil && (!strings.HasPrefix(cliErr.Error(), "--kind: ") || !strings.Contains(cliErr.Error(), "e.g. --kind demo") ||
			!strings.Contains(cliErr.Error(), "letters, digits, '-' and '_' (at most 32)")) {
			t.Errorf("kind %q: --kind says %q", name, cliErr)
		}
	}
}
