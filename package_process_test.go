package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildDeb runs make deb's script on the test binary and returns the
// package's path.
func buildDeb(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Fatal("dpkg-deb is missing (.ci/run installs dpkg): the package cannot be built")
	}
	out := t.TempDir()
	cmd := exec.Command("./scripts/mkdeb.sh", out, "v1.2.3")
	cmd.Env = append(os.Environ(), "BIN="+agentBin)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mkdeb: %v\n%s", err, b)
	}
	deb := strings.TrimSpace(string(b))
	arch, _ := exec.Command("go", "env", "GOARCH").Output()
	if want := filepath.Join(out, "agent_1.2.3_"+strings.TrimSpace(string(arch))+".deb"); deb != want {
		t.Fatalf("package %s, want %s", deb, want)
	}
	return deb
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDebPackage builds the package once (make deb's script) and checks
// it: its contents, then, as root, an install, a run and a purge.
func TestDebPackage(t *testing.T) {
	deb := buildDeb(t)
	t.Run("contents", func(t *testing.T) { testDebContents(t, deb) })
	t.Run("install, run, purge", func(t *testing.T) { testDebInstallRunPurge(t, deb) })
}

// testDebContents: the package holds the binary, the unit, the config dir
// and the maintainer scripts, each with its mode and owner; the unit is
// the one the README describes and systemd-analyze verify finds nothing
// wrong with it.
func testDebContents(t *testing.T, deb string) {
	info, err := os.Stat(deb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("package %s: %d bytes", filepath.Base(deb), info.Size())

	// dpkg-deb -c: mode, owner, size, date, time, path.
	files := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "-c", deb)), "\n") {
		f := strings.Fields(line)
		files[strings.TrimPrefix(f[5], ".")] = f[0] + " " + f[1]
	}
	for path, want := range map[string]string{
		"/usr/bin/agent":                        "-rwxr-xr-x root/root",
		"/usr/lib/systemd/system/agent.service": "-rw-r--r-- root/root",
		"/etc/agent.d/":                         "drwxr-xr-x root/root",
		"/etc/agent.d/10-agent.json":            "-rw-r--r-- root/root",
		"/etc/agent.d/README":                   "-rw-r--r-- root/root",
		"/usr/share/doc/agent/copyright":        "-rw-r--r-- root/root",
	} {
		if files[path] != want {
			t.Errorf("%s: %q in the package, want %q", path, files[path], want)
		}
	}
	for path := range files {
		if strings.Contains(path, "rpc-token") || strings.HasPrefix(path, "/var/") {
			t.Errorf("the package ships %s, which the install makes (and purge removes)", path)
		}
	}

	control := t.TempDir()
	run(t, "dpkg-deb", "-e", deb, control)
	fields := run(t, "dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends")
	for _, want := range []string{"Package: agent\n", "Version: 1.2.3\n", "Depends: passwd\n"} {
		if !strings.Contains(fields, want) {
			t.Errorf("control lacks %q:\n%s", want, fields)
		}
	}
	conffiles, _ := os.ReadFile(filepath.Join(control, "conffiles"))
	if string(conffiles) != "/etc/agent.d/10-agent.json\n/etc/agent.d/README\n" {
		t.Errorf("conffiles %q", conffiles)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		p := filepath.Join(control, s)
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("maintainer script %s: %v, mode %v; want 0755", s, err, fi.Mode())
			continue
		}
		run(t, "sh", "-n", p)
		body, _ := os.ReadFile(p)
		if !strings.Contains(string(body), "DPKG_ROOT") {
			t.Errorf("%s ignores DPKG_ROOT: it would change the host when installing into another root", s)
		}
	}

	root := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, root)
	unit, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "Restart=on-failure", "KillSignal=SIGTERM", "KillMode=process",
		"WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "ExecStart=/usr/bin/agent run --config-file /etc/agent.d",
		"User=agent", "NoNewPrivileges=yes", "ProtectSystem=full", "StateDirectory=agent", "StateDirectoryMode=0700"} {
		if !strings.Contains(string(unit), "\n"+want) {
			t.Errorf("the unit lacks %s", want)
		}
	}
	t.Run("systemd-analyze verify", func(t *testing.T) {
		if _, err := exec.LookPath("systemd-analyze"); err != nil {
			if os.Geteuid() != 0 {
				t.Skip("systemd-analyze is missing and this is not root (.ci/run installs systemd as root): unit not verified")
			}
			t.Fatal("systemd-analyze is missing, though this runs as root: apt-get install systemd (.ci/run does)")
		}
		// The unit as installed, but its ExecStart is the binary unpacked here.
		dir := t.TempDir()
		verified := strings.ReplaceAll(string(unit), "/usr/bin/agent", filepath.Join(root, "usr/bin/agent"))
		if err := os.WriteFile(filepath.Join(dir, "agent.service"), []byte(verified), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("systemd-analyze", "verify", filepath.Join(dir, "agent.service")).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
		}
	})
}

// fakeRoot is a throwaway root for dpkg --root: its own user database and
// dpkg database, and files the package must leave alone.
func fakeRoot(t *testing.T) string {
	t.Helper()
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	for _, d := range []string{"etc", "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/other", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for path, body := range map[string]string{
		"etc/passwd":            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
		"etc/group":             "root:x:0:\nalice:x:1000:\n",
		"etc/shadow":            "root:*:19000:0:99999:7:::\nalice:*:19000:0:99999:7:::\n",
		"etc/gshadow":           "root:*::\nalice:!::\n",
		"var/lib/dpkg/status":   "",
		"var/lib/other/keep":    "someone else's\n",
		"usr/bin/other-program": "#!/bin/sh\n",
	} {
		if err := os.WriteFile(filepath.Join(root, path), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The agent user must reach the installed binary and config.
	for _, d := range []string{parent, filepath.Dir(parent)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// dpkgInRoot runs dpkg on root, its maintainer scripts outside a chroot
// (they honour DPKG_ROOT), without the Depends a bare root lacks.
func dpkgInRoot(t *testing.T, root string, args ...string) string {
	t.Helper()
	return run(t, "dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--force-depends",
		"--log=/dev/null"}, args...)...)
}

// idOf reads a user's or group's number from a passwd or group file.
func idOf(t *testing.T, file, name string) (int, bool) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.Split(sc.Text(), ":")
		if p[0] == name {
			n, err := strconv.Atoi(p[2])
			if err != nil {
				t.Fatalf("%s: %s", file, sc.Text())
			}
			return n, true
		}
	}
	return 0, false
}

func statOf(t *testing.T, path string) (os.FileMode, int, int) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode(), int(st.Uid), int(st.Gid)
}

// testDebInstallRunPurge (root): the package installs into a throwaway
// root, making the agent user, its data dir and the RPC token; the agent,
// started as that user from the installed binary with the installed
// config, refuses a non-loopback bind without a key, naming the file to
// write, and runs on loopback with the token; purge removes what the
// package made and leaves the rest.
func testDebInstallRunPurge(t *testing.T, deb string) {
	if os.Geteuid() != 0 {
		t.Skip("installing a package (dpkg --root, a system user, chown) needs root; run as root (CI does)")
	}
	root := fakeRoot(t)
	dpkgInRoot(t, root, "-i", deb)

	uid, ok := idOf(t, filepath.Join(root, "etc/passwd"), "agent")
	gid, ok2 := idOf(t, filepath.Join(root, "etc/group"), "agent")
	if !ok || !ok2 {
		t.Fatal("no agent user or group after the install")
	}
	for path, want := range map[string]struct {
		mode     os.FileMode
		uid, gid int
	}{
		"var/lib/agent":                        {os.ModeDir | 0o700, uid, gid},
		"etc/agent.d":                          {os.ModeDir | 0o750, 0, gid},
		"etc/agent.d/rpc-token":                {0o640, 0, gid},
		"etc/agent.d/10-agent.json":            {0o640, 0, gid},
		"usr/bin/agent":                        {0o755, 0, 0},
		"usr/lib/systemd/system/agent.service": {0o644, 0, 0},
	} {
		mode, u, g := statOf(t, filepath.Join(root, path))
		if mode != want.mode || u != want.uid || g != want.gid {
			t.Errorf("/%s: mode %v owner %d:%d, want %v %d:%d", path, mode, u, g, want.mode, want.uid, want.gid)
		}
	}
	token, err := os.ReadFile(filepath.Join(root, "etc/agent.d/rpc-token"))
	if err != nil || !regexp.MustCompile(`^[0-9a-f]{64}\n$`).Match(token) {
		t.Fatalf("rpc token %q: %v; want 32 random bytes in hex", token, err)
	}
	// A second configure (an upgrade) keeps the token.
	dpkgInRoot(t, root, "-i", deb)
	if again, _ := os.ReadFile(filepath.Join(root, "etc/agent.d/rpc-token")); string(again) != string(token) {
		t.Fatal("reinstalling replaced the RPC token")
	}

	bin := filepath.Join(root, "usr/bin/agent")
	confDir := filepath.Join(root, "etc/agent.d")
	tokenFile := filepath.Join(confDir, "rpc-token")
	asAgent := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + filepath.Join(root, "var/lib/agent")}
		return cmd
	}
	// The installed config, as the unit runs it, but the data dir and the
	// token are the throwaway root's. Its bind is the default 0.0.0.0.
	base := []string{"run", "--config-file", confDir, "--node", "pkg", "--data-dir", filepath.Join(root, "var/lib/agent"),
		"--rpc-token-file", tokenFile, "--http-addr", ""}
	out, err := asAgent(base...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), filepath.Join(confDir, "20-encrypt.json")) {
		t.Fatalf("a non-loopback bind without a key: %v\n%s\nwant a refusal naming %s", err, out, filepath.Join(confDir, "20-encrypt.json"))
	}

	gossipAddr := fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t, "127.0.0.1"))
	rpcAddr := fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t, "127.0.0.1"))
	cmd := asAgent(append(base, "--bind", gossipAddr, "--rpc-addr", rpcAddr)...)
	var log lockedBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("log of the installed agent:\n%s", log.String())
		}
	})
	waitFor(t, "the installed agent to answer RPC with the installed token", 15*time.Second, func() bool {
		_, _, code := runCLI(t, "info", "--rpc-addr", rpcAddr, "--rpc-token-file", tokenFile)
		return code == 0
	})
	if _, stderr, code := runCLI(t, "info", "--rpc-addr", rpcAddr); code == 0 || !strings.Contains(stderr, "token") {
		t.Fatalf("the RPC answered without the token (exit %d): %s", code, stderr)
	}
	if entries, err := os.ReadDir(filepath.Join(root, "var/lib/agent")); err != nil || len(entries) == 0 {
		t.Fatalf("the agent user wrote nothing in its data dir: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := <-exited; err != nil {
		t.Fatalf("the agent did not leave cleanly on SIGTERM: %v", err)
	}
	stopped = true

	// An operator's own file in the config dir outlives the package.
	operator := filepath.Join(confDir, "50-operator.json")
	if err := os.WriteFile(operator, []byte(`{"tag": {"dc": "east"}}`), 0o640); err != nil {
		t.Fatal(err)
	}
	dpkgInRoot(t, root, "--purge", "agent")
	if _, ok := idOf(t, filepath.Join(root, "etc/passwd"), "agent"); ok {
		t.Error("the agent user outlived the purge")
	}
	if _, ok := idOf(t, filepath.Join(root, "etc/group"), "agent"); ok {
		t.Error("the agent group outlived the purge")
	}
	if _, ok := idOf(t, filepath.Join(root, "etc/passwd"), "alice"); !ok {
		t.Error("the purge removed another user")
	}
	for _, gone := range []string{"var/lib/agent", "etc/agent.d/rpc-token", "etc/agent.d/10-agent.json", "usr/bin/agent",
		"usr/lib/systemd/system/agent.service"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("/%s outlived the purge", gone)
		}
	}
	for _, kept := range []string{"etc/agent.d/50-operator.json", "var/lib/other/keep", "usr/bin/other-program"} {
		if _, err := os.Lstat(filepath.Join(root, kept)); err != nil {
			t.Errorf("the purge removed /%s, which the package did not make", kept)
		}
	}
}
