package cli

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// maxFuncLines bounds every function and function literal in the
// package's non-test code: logic belongs in small run functions that tests
// can call, not in long command closures.
const maxFuncLines = 100

func TestNoLongFunctions(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			var body *ast.BlockStmt
			what := "function literal"
			switch x := n.(type) {
			case *ast.FuncDecl:
				body, what = x.Body, x.Name.Name
			case *ast.FuncLit:
				body = x.Body
			}
			if body == nil {
				return true
			}
			checked++
			start, end := fset.Position(body.Lbrace), fset.Position(body.Rbrace)
			if lines := end.Line - start.Line + 1; lines > maxFuncLines {
				t.Errorf("%s: %s is %d lines (at most %d): split it", start, what, lines, maxFuncLines)
			}
			return true
		})
	}
	if checked < 50 {
		t.Fatalf("checked only %d functions in %d files: not the cli package's sources?", checked, len(files))
	}
}
