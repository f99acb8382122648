package e2efleet

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/testutil/otheruser"
	"github.com/urldisk/urldisk/internal/testutil/testpki"
)

// TestFleetTLSAndRunAs, with real processes: an agent serving its API
// over TLS advertises https:// and the CLI reaches it with
// $URLDISK_TLS_CA; a machine run with --run-as reads its own disk (real
// nbdinfo) but neither another machine's disk nor the token file.
func TestFleetTLSAndRunAs(t *testing.T) {
	other := otheruser.Get(t)
	pki := testpki.New(t)
	e := newEnv(t)
	// The run-as user traverses to its own socket directory, as it can
	// under the default /tmp.
	if err := os.Chmod(e.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Setenv("URLDISK_TLS_CA", pki.CAFile)
	a := e.startAgent("h1", "--tls-cert", pki.CertFile, "--tls-key", pki.KeyFile)
	if !strings.HasPrefix(a.api, "https://127.0.0.1:") {
		t.Fatalf("agent with --tls-cert advertises %s, want https://", a.api)
	}
	if hb := e.heartbeat("h1"); hb == nil || hb.API != a.api {
		t.Fatalf("heartbeat %+v: want API %s", hb, a.api)
	}
	e.mustCLI("create", e.volumeURL("v1"), "--size", "16M")
	e.mustCLI("create", e.volumeURL("v2"), "--size", "16M")

	r := e.cli("machine", "run", "victim", "--volume", e.volumeURL("v1"), "--runtime", "process", "--host", "h1", "--", "sleep", "1000")
	if r.code != 0 || strings.Contains(r.stderr, "could not ask the agent") {
		t.Fatalf("machine run over the TLS API (nudge):\n%s", r)
	}
	running := func(name string) func() bool {
		return func() bool {
			hb := e.heartbeat("h1")
			if hb == nil {
				return false
			}
			st, ok := hb.Machine(name)
			return ok && st.Phase == fleet.PhaseRunning
		}
	}
	e.waitFor("victim running", 30*time.Second, running("victim"))

	victimSock := filepath.Join(a.stateDir, "sock", "victim", "nbd")
	script := fmt.Sprintf(`echo "uid=$(id -u)"
cat %s >/dev/null 2>&1 && echo token-read || echo token-denied
nbdinfo --size "$URLDISK_NBD_URI" && echo own-disk-ok
nbdinfo --size 'nbd+unix:///v1?socket=%s' >/dev/null 2>&1 && echo victim-read || echo victim-denied
echo probe-done
exec sleep 1000`, e.tokenFile, victimSock)
	e.mustCLI("machine", "run", "m", "--volume", e.volumeURL("v2"), "--runtime", "process", "--host", "h1",
		"--run-as", other.Name, "--", "sh", "-c", script)
	console := filepath.Join(a.stateDir, "machines", "m", "console.log")
	var out string
	e.waitFor("the run-as workload's report", 30*time.Second, func() bool {
		b, _ := os.ReadFile(console)
		out = string(b)
		return strings.Contains(out, "probe-done")
	})
	for _, want := range []string{fmt.Sprintf("uid=%d\n", other.UID), "token-denied\n", "16777216\nown-disk-ok\n", "victim-denied\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("run-as workload: want %q in its output:\n%s", want, out)
		}
	}
}
