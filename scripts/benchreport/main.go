// Command benchreport runs the Go benchmarks, prints one table of every
// figure they report (time, memory and custom metrics such as p99_ms), and
// writes the same figures as JSON for comparison across commits.
//
// Usage: go run ./scripts/benchreport [-out bench.json] [-bench regexp] -- PACKAGES...
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one benchmark line: its name, iterations and every metric.
type Result struct {
	Package    string             `json:"package"`
	Name       string             `json:"name"`
	Iterations int64              `json:"iterations"`
	Metrics    map[string]float64 `json:"metrics"`
}

// Report is what the JSON file holds.
type Report struct {
	When    time.Time `json:"when"`
	Go      string    `json:"go"`
	Results []Result  `json:"results"`
}

func main() {
	out := flag.String("out", "bench.json", "where to write the JSON report")
	bench := flag.String("bench", ".", "benchmarks to run (go test -bench)")
	benchtime := flag.String("benchtime", "", "go test -benchtime, when set")
	timeout := flag.String("timeout", "", "go test -timeout, when set")
	flag.Parse()
	pkgs := flag.Args()
	if len(pkgs) == 0 {
		pkgs = []string{"./..."}
	}
	args := []string{"test", "-run=^$", "-bench=" + *bench, "-benchmem", "-count=1"}
	if *benchtime != "" {
		args = append(args, "-benchtime="+*benchtime)
	}
	if *timeout != "" {
		args = append(args, "-timeout="+*timeout)
	}
	cmd := exec.Command("go", append(args, pkgs...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fail(err)
	}
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	results := parse(io.TeeReader(stdout, os.Stderr))
	if err := cmd.Wait(); err != nil {
		fail(fmt.Errorf("go test: %w", err))
	}
	printTable(os.Stdout, results)
	goVersion, _ := exec.Command("go", "env", "GOVERSION").Output()
	data, _ := json.MarshalIndent(Report{When: time.Now().UTC(), Go: strings.TrimSpace(string(goVersion)), Results: results}, "", "  ")
	if err := os.WriteFile(*out, append(data, '\n'), 0o644); err != nil {
		fail(err)
	}
	fmt.Printf("\nwrote %s (%d benchmarks)\n", *out, len(results))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "benchreport:", err)
	os.Exit(1)
}

// parse reads `go test -bench` output: "pkg: X" lines name the package, and
// "BenchmarkName-N  iters  value unit  value unit ..." lines carry figures.
func parse(r io.Reader) []Result {
	var results []Result
	pkg := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		iters, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		res := Result{Package: pkg, Name: f[0], Iterations: iters, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			res.Metrics[f[i+1]] = v
		}
		results = append(results, res)
	}
	return results
}

func printTable(w io.Writer, results []Result) {
	units := map[string]bool{}
	for _, r := range results {
		for u := range r.Metrics {
			units[u] = true
		}
	}
	order := []string{"ns/op", "B/op", "allocs/op"}
	var rest []string
	for u := range units {
		if u != "ns/op" && u != "B/op" && u != "allocs/op" {
			rest = append(rest, u)
		}
	}
	sort.Strings(rest)
	cols := append(order, rest...)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "\nBENCHMARK\t")
	for _, c := range cols {
		fmt.Fprintf(tw, "%s\t", c)
	}
	fmt.Fprintln(tw)
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t", r.Name)
		for _, c := range cols {
			if v, ok := r.Metrics[c]; ok {
				fmt.Fprintf(tw, "%s\t", strconv.FormatFloat(v, 'g', 6, 64))
			} else {
				fmt.Fprint(tw, "-\t")
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}
