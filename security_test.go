package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runAgentBriefly runs `agent run` expecting it to refuse to start.
func runAgentExpectingRefusal(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(agentBin, append([]string{"run", "--node", "x", "--data-dir", t.TempDir()}, args...)...)
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("agent run %v: err %v, want exit 1\n%s", args, err, out)
	}
	return string(out)
}

func TestUnencryptedGossipOnAnOpenAddressIsRefused(t *testing.T) {
	port := freeLoopbackPort(t, "127.0.0.1")
	out := runAgentExpectingRefusal(t, "--bind", fmt.Sprintf("0.0.0.0:%d", port), "--rpc-addr", "127.0.0.1:0")
	for _, want := range []string{"not encrypted", "agent keygen", "--encrypt", "--insecure"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not mention %s:\n%s", want, out)
		}
	}
}

func TestInsecureStartsAndWarns(t *testing.T) {
	a := newTestAgent(t, 1)
	a.gossip = strings.Replace(a.gossip, "127.0.0.1", "0.0.0.0", 1)
	a.start(t, "--insecure")
	// The log reaches the test through a pipe, maybe after the RPC answers.
	waitFor(t, "the --insecure warning in the log", 10*time.Second, func() bool {
		return strings.Contains(a.p.log.String(), "NOT encrypted")
	})
}

func TestOpenRPCWithoutATokenIsRefused(t *testing.T) {
	port := freeLoopbackPort(t, "127.0.0.1")
	out := runAgentExpectingRefusal(t, "--bind", "127.0.0.1:0", "--rpc-addr", fmt.Sprintf("0.0.0.0:%d", port))
	if !strings.Contains(out, "no token") || !strings.Contains(out, "--rpc-token-file") {
		t.Fatalf("refusal: %s", out)
	}
}

func TestRPCTokenIsRequired(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600)
	wrongFile := filepath.Join(dir, "wrong")
	os.WriteFile(wrongFile, []byte("guess\n"), 0o600)

	a := newTestAgent(t, 1)
	a.rpcToken = tokenFile
	a.start(t, "--rpc-token-file", tokenFile)
	if _, errOut, code := runCLI(t, "members", "--rpc-addr", a.rpc); code != 1 || !strings.Contains(errOut, "requires an RPC token") {
		t.Fatalf("no token: code %d %s", code, errOut)
	}
	if _, errOut, code := runCLI(t, "members", "--rpc-addr", a.rpc, "--rpc-token-file", wrongFile); code != 1 || !strings.Contains(errOut, "refused the RPC token") {
		t.Fatalf("wrong token: code %d %s", code, errOut)
	}
	if out, errOut, code := runCLI(t, "members", "--rpc-addr", a.rpc, "--rpc-token-file", tokenFile); code != 0 || !strings.Contains(out, a.name) {
		t.Fatalf("right token: code %d %s %s", code, out, errOut)
	}
}

// TestEncryptedMeshKeysAndRestart: --encrypt is kept in the data dir's
// keyring, a restart needs no --encrypt, and agent keys sees every node.
func TestEncryptedMeshKeysAndRestart(t *testing.T) {
	out, _, code := runCLI(t, "keygen")
	key := strings.TrimSpace(out)
	if raw, err := base64.StdEncoding.DecodeString(key); code != 0 || err != nil || len(raw) != 32 {
		t.Fatalf("keygen: %q %v", out, err)
	}
	a1, a2 := newTestAgent(t, 1), newTestAgent(t, 2)
	a1.start(t, "--encrypt", key)
	a2.start(t, "--encrypt", key, "--join", a1.gossip)
	waitFor(t, "two encrypted members", 15*time.Second, func() bool { return len(membersOf(t, a1)) == 2 })
	if _, err := os.Stat(filepath.Join(a1.dataDir, "keyring.json")); err != nil {
		t.Fatalf("--encrypt was not kept in the data dir: %v", err)
	}
	out, errOut, code := runCLI(t, "keys", "--rpc-addr", a1.rpc, "--list")
	if code != 0 || !strings.Contains(out, key) || !strings.Contains(out, "on 2 of 2 nodes") {
		t.Fatalf("keys --list: code %d\n%s%s", code, out, errOut)
	}
	// Restart a2 without --encrypt: its keyring carries the key.
	a2.kill9(t)
	a2.start(t)
	out, _, _ = runCLI(t, "info", "--rpc-addr", a2.rpc, "--format", "json")
	var stats map[string]map[string]string
	json.Unmarshal([]byte(out), &stats)
	if stats["serf"]["encrypted"] != "true" {
		t.Fatalf("restarted agent is not encrypted: %v", stats["serf"])
	}
	waitFor(t, "the restarted agent back in the encrypted mesh", 30*time.Second, func() bool {
		return membersOf(t, a1)[a2.name].Status == "alive" && len(membersOf(t, a2)) == 2
	})
	// An agent with another key cannot join, and says why.
	other, _, _ := runCLI(t, "keygen")
	a3 := newTestAgent(t, 3)
	a3.start(t, "--encrypt", strings.TrimSpace(other))
	_, errOut, code = runCLI(t, "join", "--rpc-addr", a3.rpc, a1.gossip)
	if code != 1 || !strings.Contains(errOut, "keys do not match") || !strings.Contains(errOut, "--encrypt") {
		t.Fatalf("join with another key: code %d %s", code, errOut)
	}
	if len(membersOf(t, a1)) != 2 {
		t.Fatal("an agent with the wrong key got into the mesh")
	}
}
