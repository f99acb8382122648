// Package archtest keeps ARCHITECTURE.md's import table true: the table
// between its "imports:begin" and "imports:end" markers must list exactly
// the internal imports of every non-test package under internal/.
package archtest

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/urldisk/urldisk/internal/"

// codeImports maps each package dir under internal/ (testutil and the
// end-to-end test packages excepted: they are tests) to its sorted internal
// imports from non-test files.
func codeImports(t *testing.T, root string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		if skipped(rel) {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		if f.Name.Name == "main" {
			return nil
		}
		deps := out[rel]
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			if s, ok := strings.CutPrefix(p, module); ok && !slices.Contains(deps, s) {
				deps = append(deps, s)
			}
		}
		slices.Sort(deps)
		out[rel] = deps
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func skipped(rel string) bool {
	return rel == "archtest" || strings.HasPrefix(rel, "testutil") || strings.HasPrefix(rel, "e2e") ||
		strings.HasSuffix(rel, "test") // objstoretest, nbdtest: test helpers
}

// docImports parses the marked table: "| `pkg` | `a`, `b` |" rows.
func docImports(t *testing.T, doc string) map[string][]string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, "<!-- imports:begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- imports:end -->")
	if !ok || !ok2 {
		t.Fatal("ARCHITECTURE.md has no imports:begin/imports:end block")
	}
	out := map[string][]string{}
	for _, line := range strings.Split(block, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.Contains(cells[1], "`") {
			continue
		}
		pkg := strings.Trim(strings.TrimSpace(cells[1]), "`")
		var deps []string
		for _, d := range strings.Split(cells[2], ",") {
			if d = strings.Trim(strings.TrimSpace(d), "`"); d != "" && d != "—" {
				deps = append(deps, d)
			}
		}
		slices.Sort(deps)
		out[pkg] = deps
	}
	return out
}

func TestArchitectureImportTable(t *testing.T) {
	doc, err := os.ReadFile("../../ARCHITECTURE.md")
	if err != nil {
		t.Fatal(err)
	}
	code, table := codeImports(t, ".."), docImports(t, string(doc))
	for pkg, deps := range code {
		got, ok := table[pkg]
		switch {
		case !ok:
			t.Errorf("ARCHITECTURE.md import table lacks package %s (imports %v)", pkg, deps)
		case !slices.Equal(got, deps):
			t.Errorf("ARCHITECTURE.md says %s imports %v; the code imports %v", pkg, got, deps)
		}
	}
	for pkg := range table {
		if _, ok := code[pkg]; !ok {
			t.Errorf("ARCHITECTURE.md import table lists %s, which is not a package under internal/", pkg)
		}
	}
}

// TestNoImportCycleUpward checks the one-way rule for the storage layers:
// nothing below the engine imports an export, the agent or the CLI.
func TestNoImportCycleUpward(t *testing.T) {
	upper := []string{"cli", "agent", "export", "fleet", "nbd", "control"}
	lower := []string{"volume", "journal", "gcplan", "extmap", "format", "cache", "objstore", "volref", "blockdev", "units", "rundir"}
	code := codeImports(t, "..")
	for _, l := range lower {
		for _, d := range code[l] {
			for _, u := range upper {
				if d == u || strings.HasPrefix(d, u+"/") {
					t.Errorf("%s imports %s: dependencies must point from exports and agent to the engine, not back", l, d)
				}
			}
		}
	}
}
