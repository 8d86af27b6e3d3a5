package interp

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/meshagent/agent/agent/rpc"
	"github.com/meshagent/agent/internal/durable"
)

// This file gives kinds several named ports and a connection file: what a
// Jupyter kernel needs. The file holds a per-interpreter HMAC key. The key
// is written only there (mode 0600, in the interpreter's directory) and in
// the spawn answer to the asker; never in tags, which every member
// receives, nor on a command line, which `ps` shows.

// ConnectionJupyter is the connection file format of Jupyter kernels.
const ConnectionJupyter = "jupyter"

// JupyterPorts are the five ports of a Jupyter kernel, by the names its
// connection file gives them (without "_port").
var JupyterPorts = []string{"shell", "iopub", "stdin", "control", "hb"}

// maxPorts bounds the named ports of one kind.
const maxPorts = 8

var validPortName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,15}$`)

// connectionFileName is the connection file's path inside an interpreter's
// directory: a subdirectory of its own, so that it can be handed to the
// kind's user without opening the directory that holds the spec.
const connectionFileName = "kernel/connection.json"

// setPorts checks and sets a kind's named ports and connection format. A
// Jupyter kind gets the five Jupyter ports, before any others it names.
func (k *Kind) setPorts(ports []string, connection string) error {
	switch connection {
	case "":
	case ConnectionJupyter:
		ports = append(slices.Clone(JupyterPorts), ports...)
	default:
		return fmt.Errorf("connection %q is not known: use %q or leave it out", connection, ConnectionJupyter)
	}
	seen := map[string]bool{}
	for _, p := range ports {
		if !validPortName.MatchString(p) {
			return fmt.Errorf("port name %q: use lower-case letters, digits and '_', starting with a letter (at most 16)", p)
		}
		if seen[p] {
			return fmt.Errorf("port name %q appears twice (a jupyter connection already names %s)", p, strings.Join(JupyterPorts, ", "))
		}
		seen[p] = true
	}
	if len(ports) > maxPorts {
		return fmt.Errorf("%d ports: at most %d", len(ports), maxPorts)
	}
	for _, c := range k.Command {
		for _, m := range portPlaceholder.FindAllStringSubmatch(c, -1) {
			if !seen[m[1]] {
				return fmt.Errorf("command names {port:%s}, but the kind has no port %q: add it to \"ports\"", m[1], m[1])
			}
		}
		if strings.Contains(c, "{connection_file}") && connection == "" {
			return fmt.Errorf("command names {connection_file}, but the kind writes none: add \"connection\": %q", ConnectionJupyter)
		}
	}
	if len(ports) > 0 {
		k.Ports = ports
	}
	k.Connection = connection
	return nil
}

var portPlaceholder = regexp.MustCompile(`\{port:([^}]*)\}`)

// namedPorts picks a free port on ip for each of the kind's named ports.
func (k Kind) namedPorts(ip string, freePort func(ip string, udpToo bool) (int, error)) (map[string]int, error) {
	ports := map[string]int{}
	used := map[int]bool{}
	for _, name := range k.Ports {
		for {
			p, err := freePort(ip, false)
			if err != nil {
				return nil, err
			}
			if !used[p] { // the system may hand out a just-released port again
				used[p], ports[name] = true, p
				break
			}
		}
	}
	return ports, nil
}

// expand replaces {port:NAME} and {connection_file} in an argv already
// rendered by argv, and adds the ports and the file to the environment.
func (k Kind) expand(argv, env []string, ports map[string]int, connFile string) ([]string, []string) {
	pairs := []string{"{connection_file}", connFile}
	for name, p := range ports {
		pairs = append(pairs, "{port:"+name+"}", strconv.Itoa(p))
		env = append(env, "AGENT_INTERPRETER_PORT_"+strings.ToUpper(name)+"="+strconv.Itoa(p))
	}
	if connFile != "" {
		env = append(env, "AGENT_INTERPRETER_CONNECTION_FILE="+connFile)
	}
	r := strings.NewReplacer(pairs...)
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = r.Replace(a)
	}
	return out, env
}

// jupyterFile is Jupyter's connection file.
type jupyterFile struct {
	IP              string `json:"ip"`
	Transport       string `json:"transport"`
	ShellPort       int    `json:"shell_port"`
	IOPubPort       int    `json:"iopub_port"`
	StdinPort       int    `json:"stdin_port"`
	ControlPort     int    `json:"control_port"`
	HBPort          int    `json:"hb_port"`
	Key             string `json:"key"`
	SignatureScheme string `json:"signature_scheme"`
	KernelName      string `json:"kernel_name"`
}

// newConnection makes an interpreter's connection: its address and ports
// and a fresh 256-bit key.
func newConnection(kind Kind, ip string, ports map[string]int) (rpc.Connection, error) {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return rpc.Connection{}, fmt.Errorf("connection key: %w", err)
	}
	return rpc.Connection{IP: ip, Transport: "tcp", Ports: ports, Key: hex.EncodeToString(key[:]),
		SignatureScheme: "hmac-sha256", KernelName: kind.Name}, nil
}

// writeConnection writes the connection file into the interpreter's
// directory dir, readable only by the interpreter's user (uid, gid; -1:
// the agent's own), and returns its path.
func writeConnection(dir string, c rpc.Connection, uid, gid int) (string, error) {
	data, err := json.MarshalIndent(jupyterFile{IP: c.IP, Transport: c.Transport, ShellPort: c.Ports["shell"],
		IOPubPort: c.Ports["iopub"], StdinPort: c.Ports["stdin"], ControlPort: c.Ports["control"], HBPort: c.Ports["hb"],
		Key: c.Key, SignatureScheme: c.SignatureScheme, KernelName: c.KernelName}, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, connectionFileName)
	sub := filepath.Dir(path)
	if err := os.MkdirAll(sub, 0o700); err != nil {
		return "", err
	}
	if err := durable.WriteFile(path, data, 0o600); err != nil {
		return "", err
	}
	if uid >= 0 {
		// The kernel runs as the kind's user: it may enter the
		// directory but not list it, and owns only its own subdirectory.
		if err := os.Chmod(dir, 0o711); err != nil {
			return "", err
		}
		for _, p := range []string{sub, path} {
			if err := os.Chown(p, uid, gid); err != nil {
				return "", err
			}
		}
	}
	return path, nil
}

// readConnection reads an interpreter's connection file back, for an asker
// that re-sent its spawn order and lost the first answer.
func readConnection(path string) (*rpc.Connection, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f jupyterFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("connection file %s: %w", path, err)
	}
	return &rpc.Connection{IP: f.IP, Transport: f.Transport, Key: f.Key, SignatureScheme: f.SignatureScheme,
		KernelName: f.KernelName, Ports: map[string]int{"shell": f.ShellPort, "iopub": f.IOPubPort,
			"stdin": f.StdinPort, "control": f.ControlPort, "hb": f.HBPort}}, nil
}

// connAnswer is the connection in a spawn answer, with short keys: the
// answer travels in a serf query response (at most 1024 bytes, with
// serf's own header), directly to the asker and encrypted with the mesh's
// key when it has one.
type connAnswer struct {
	IP        string         `msgpack:"i"`
	Transport string         `msgpack:"t"`
	Ports     map[string]int `msgpack:"p"`
	Key       string         `msgpack:"k"`
	Scheme    string         `msgpack:"s"`
	Kernel    string         `msgpack:"n"`
}

func toConnAnswer(c *rpc.Connection) *connAnswer {
	if c == nil {
		return nil
	}
	return &connAnswer{IP: c.IP, Transport: c.Transport, Ports: c.Ports, Key: c.Key, Scheme: c.SignatureScheme, Kernel: c.KernelName}
}

func (a *connAnswer) connection() *rpc.Connection {
	if a == nil {
		return nil
	}
	return &rpc.Connection{IP: a.IP, Transport: a.Transport, Ports: a.Ports, Key: a.Key, SignatureScheme: a.Scheme, KernelName: a.Kernel}
}

// hostIP is the address part of an endpoint.
func hostIP(endpoint string) string {
	h, _, err := net.SplitHostPort(endpoint)
	if err != nil {
		return endpoint
	}
	return h
}

// connectionFor is the connection of a running interpreter for a re-sent
// spawn order: only when asker is the agent that started it.
func connectionFor(specPath, asker string) *connAnswer {
	spec, err := LoadSpec(specPath)
	if err != nil || spec.ConnectionFile == "" || spec.Asker != asker {
		return nil
	}
	c, err := readConnection(spec.ConnectionFile)
	if err != nil {
		return nil
	}
	return toConnAnswer(c)
}
