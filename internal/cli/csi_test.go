package cli

import (
	"context"
	"strings"
	"testing"
)

// TestCSIFlagsChecked: `urldisk csi` refuses a run that serves nothing, a
// node without an id and an endpoint that is not a unix socket path, each
// naming what is wrong, before it listens.
func TestCSIFlagsChecked(t *testing.T) {
	sock := "unix://" + t.TempDir() + "/csi.sock"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"csi", "--endpoint", sock}, "--controller, --node"},
		{[]string{"csi", "--endpoint", sock, "--node"}, "--node-id"},
		{[]string{"csi", "--endpoint", "tcp://127.0.0.1:1", "--controller"}, "unix:///path"},
		{[]string{"csi", "--endpoint", "unix://relative/csi.sock", "--controller"}, "absolute"},
	} {
		_, err := run(t, context.Background(), c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("urldisk %s: %v, want an error naming %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
