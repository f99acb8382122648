package cli

import (
	"os"
	"strings"
	"testing"
)

// TestREADMETablesUnbroken: in Markdown a blank line ends a table, so rows
// after one render as plain text (it happened to the command table). No
// table row may follow a blank line that follows a table row.
func TestREADMETablesUnbroken(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	isRow := func(s string) bool { return strings.HasPrefix(strings.TrimSpace(s), "|") }
	for i := 2; i < len(lines); i++ {
		if isRow(lines[i]) && strings.TrimSpace(lines[i-1]) == "" && isRow(lines[i-2]) {
			t.Errorf("README.md:%d: table row after a blank line ends the table above it: %.60s", i+1, lines[i])
		}
	}
}
