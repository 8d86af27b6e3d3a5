package jupyter_test

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// jupyterPython finds a Python with jupyter_client 7 or later: $JUPYTER_PYTHON,
// Debian's /usr/bin/python3, or python3 on the PATH. The reason is set
// when there is none.
func jupyterPython() (string, string) {
	candidates := []string{os.Getenv("JUPYTER_PYTHON"), "/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		if p == "" {
			continue
		}
		check := exec.Command(p, "-c", "import jupyter_client, sys; sys.exit(int(jupyter_client.version_info[0]) < 7)")
		if check.Run() == nil {
			return p, ""
		}
	}
	return "", "no python3 with jupyter_client 7 or later (apt-get install python3-jupyter-client python3-ipykernel; .ci/run does)"
}

// TestProvisionerUnits runs the provisioner's Python unit tests (a fake
// agent stands in for the mesh) with the Python that has jupyter_client.
func TestProvisionerUnits(t *testing.T) {
	py, why := jupyterPython()
	if py == "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-m", "unittest", "discover", "-s", "tests", "-v")
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s -m unittest: %v\n%s", py, err, out)
	}
	t.Logf("%s", out)
}
