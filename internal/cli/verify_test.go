package cli

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A wrong argument count is "could not check" (exit 2) like every other
// failure before the check, not the generic exit 1 of other usage errors:
// cron jobs tell "problems found" (1) from "did not run" by the status.
func TestVerifyUsageErrorsExitUncheckable(t *testing.T) {
	for _, args := range [][]string{{"verify"}, {"verify", "file:///a/v", "file:///b/v"}} {
		_, err := run(t, context.Background(), args...)
		var ec interface{ ExitCode() int }
		if !errors.As(err, &ec) || ec.ExitCode() != verifyExitUncheckable {
			t.Fatalf("urldisk %s: want exit %d, got %v", strings.Join(args, " "), verifyExitUncheckable, err)
		}
		if msg := err.Error(); !strings.Contains(msg, "verify: expected a volume URL") || !strings.Contains(msg, "usage: urldisk verify URL") {
			t.Fatalf("urldisk %s: want the expected argument and usage named, got %q", strings.Join(args, " "), msg)
		}
	}
}
