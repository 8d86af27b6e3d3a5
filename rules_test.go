package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/meshagent/agent"

// goPackage is one directory's non-test Go files, parsed.
type goPackage struct {
	dir   string // relative to the module root, "." for main
	files []*ast.File
}

func parsePackages(t *testing.T) []goPackage {
	t.Helper()
	byDir := map[string]*goPackage{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != "." || d.Name() == "testdata" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		if byDir[dir] == nil {
			byDir[dir] = &goPackage{dir: dir}
		}
		byDir[dir].files = append(byDir[dir].files, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []goPackage
	for _, p := range byDir {
		out = append(out, *p)
	}
	return out
}

func imports(f *ast.File) []string {
	var out []string
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		out = append(out, p)
	}
	return out
}

func isStdlib(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

// TestImportRules enforces the layout of DESIGN.md: who may import what.
func TestImportRules(t *testing.T) {
	serfOrMemberlist := func(p string) bool {
		return strings.HasPrefix(p, "github.com/hashicorp/serf") || strings.HasPrefix(p, "github.com/hashicorp/memberlist") ||
			strings.HasPrefix(p, "github.com/hashicorp/go-msgpack")
	}
	// Pure packages: no network, files, processes, wall clock or global randomness.
	forbiddenInPure := map[string]bool{
		"net": true, "net/http": true, "os": true, "os/exec": true, "io/ioutil": true, "syscall": true,
		"math/rand": true, "math/rand/v2": true, "crypto/rand": true, "unsafe": true,
	}
	allowed := map[string]func(string) bool{
		"agent/rpc": func(p string) bool { return isStdlib(p) || p == "github.com/vmihailenco/msgpack/v5" },
		"placement": isStdlib,
		"state":     isStdlib,
		"bidding": func(p string) bool {
			return isStdlib(p) || p == "github.com/vmihailenco/msgpack/v5" || p == module+"/gossip" || p == module+"/placement"
		},
		"agent/interp": func(p string) bool {
			return isStdlib(p) || p == "github.com/vmihailenco/msgpack/v5" || p == module+"/gossip" || p == module+"/placement" ||
				p == module+"/state" || p == module+"/bidding" || p == module+"/agent/rpc" || p == module+"/internal/durable" ||
				p == module+"/agent/checks"
		},
		"internal/durable": isStdlib,
		"chaos":            isStdlib,
		"agent/checks": func(p string) bool { // the health checks: probes and their hysteresis, no mesh
			return isStdlib(p) || p == module+"/internal/procgroup"
		},
		"internal/procgroup": isStdlib,
		"cli": func(p string) bool {
			return isStdlib(p) || p == "github.com/urfave/cli/v2" || p == module+"/agent" ||
				p == module+"/agent/rpc" || p == module+"/gossip" || p == module+"/simulation" || p == module+"/chaos"
		},
	}
	for _, pkg := range parsePackages(t) {
		for _, f := range pkg.files {
			for _, imp := range imports(f) {
				if serfOrMemberlist(imp) && pkg.dir != "gossip" {
					t.Errorf("%s imports %s: only gossip/ may import serf and memberlist", pkg.dir, imp)
				}
				if ok := allowed[pkg.dir]; ok != nil && !ok(imp) {
					t.Errorf("%s imports %s, which DESIGN.md does not allow it", pkg.dir, imp)
				}
				if (pkg.dir == "placement" || pkg.dir == "state" || pkg.dir == "chaos") && forbiddenInPure[imp] {
					t.Errorf("%s imports %s: pure packages do no I/O and take time and randomness as values", pkg.dir, imp)
				}
			}
		}
	}
}

// TestPurePackagesReadNoClock: time arrives as a value in placement/,
// state/ and chaos/, never from the wall clock or a timer.
func TestPurePackagesReadNoClock(t *testing.T) {
	clockFuncs := map[string]bool{"Now": true, "Since": true, "Until": true, "Sleep": true, "After": true,
		"AfterFunc": true, "Tick": true, "NewTimer": true, "NewTicker": true}
	for _, pkg := range parsePackages(t) {
		if pkg.dir != "placement" && pkg.dir != "state" && pkg.dir != "chaos" {
			continue
		}
		for _, f := range pkg.files {
			ast.Inspect(f, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "time" && clockFuncs[sel.Sel.Name] {
					t.Errorf("%s calls time.%s: pass time in instead", pkg.dir, sel.Sel.Name)
				}
				return true
			})
		}
	}
}

// TestEveryPackageHasADoc: each package says what it owns and must never do.
func TestEveryPackageHasADoc(t *testing.T) {
	for _, pkg := range parsePackages(t) {
		documented := false
		for _, f := range pkg.files {
			if f.Doc != nil && (strings.HasPrefix(f.Doc.Text(), "Package ") || strings.HasPrefix(f.Doc.Text(), "Command ")) {
				documented = true
			}
		}
		if !documented {
			t.Errorf("package %s has no package doc comment", pkg.dir)
		}
	}
}
