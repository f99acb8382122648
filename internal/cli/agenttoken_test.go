package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/agent"
)

// `urldisk agent token` prints a token and a tokens-file line that an
// agent accepts with the scope and machines asked; bad scopes are refused.
func TestAgentTokenCommand(t *testing.T) {
	out := mustRun(t, "agent", "token", "web-ops", "--scope", "machine", "--machines", "web-*,api-1")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || len(lines[0]) < agent.MinTokenLen || strings.Contains(lines[1], lines[0]) {
		t.Fatalf("output %q: want a token, then a line without it", out)
	}
	toks, err := agent.ParseTokens(strings.NewReader(lines[1]), "output")
	if err != nil || len(toks) != 1 || toks[0].Name != "web-ops" || toks[0].Scope != agent.ScopeMachine || strings.Join(toks[0].Machines, ",") != "web-*,api-1" {
		t.Fatalf("line %q parsed as %+v, %v", lines[1], toks, err)
	}
	if _, err := run(t, context.Background(), "agent", "token", "x", "--scope", "root"); err == nil || !strings.Contains(err.Error(), `--scope: unknown scope "root"`) {
		t.Fatalf("bad scope: %v", err)
	}
	if _, err := run(t, context.Background(), "agent", "token", "x", "--scope", "admin", "--machines", "a"); err == nil || !strings.Contains(err.Error(), "admin token cannot be limited") {
		t.Fatalf("limited admin token: %v", err)
	}
}
