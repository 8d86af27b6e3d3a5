package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzConfigFile: a config file is user input. No content may panic the
// loader; what it accepts must validate or be refused with a message.
func FuzzConfigFile(f *testing.F) {
	f.Add(`{"node": "n1", "bind": "127.0.0.1:7946", "join": ["127.0.0.2:7946"], "tag": {"dc": "east"}}`)
	f.Add(`{"load_window": "30s", "publish_threshold": 2.5, "capacity": 8, "insecure": true}`)
	f.Add(`{"tag": ["a=b", "c=d"], "profile": "wan", "log_level": "debug"}`)
	f.Add(`{"bind": 7946}`)
	f.Add(`[]`)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body string) {
		path := filepath.Join(dir, "fuzz.json")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c := DefaultConfig()
		if err := c.ApplyFile(path); err != nil {
			if err.Error() == "" {
				t.Fatal("an error with no message")
			}
			return
		}
		_ = c.Validate()
	})
}
