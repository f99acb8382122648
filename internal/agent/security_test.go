package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/rundir"
	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
	"github.com/urldisk/urldisk/internal/testutil/nbdclient"
	"github.com/urldisk/urldisk/internal/testutil/otheruser"
	"github.com/urldisk/urldisk/internal/testutil/testpki"
)

// probeEnv makes the test binary a workload that reports what it can
// reach: its uid, the token file, another machine's NBD socket, the
// token in its environment, and its own disk; then it waits to be stopped.
const (
	probeEnv       = "URLDISK_AGENT_TEST_PROBE"
	probeTokenFile = "URLDISK_AGENT_TEST_TOKEN_FILE"
	probeOtherSock = "URLDISK_AGENT_TEST_OTHER_SOCK"
)

func probeMain() int {
	result := func(err error) string {
		switch {
		case err == nil:
			return "ok"
		case errors.Is(err, fs.ErrPermission):
			return "EACCES"
		}
		return err.Error()
	}
	fmt.Printf("probe uid=%d\n", os.Getuid())
	_, err := os.ReadFile(os.Getenv(probeTokenFile))
	fmt.Printf("probe token-file=%s\n", result(err))
	conn, err := net.Dial("unix", os.Getenv(probeOtherSock))
	if err == nil {
		conn.Close()
	}
	fmt.Printf("probe other-socket=%s\n", result(err))
	_, tokenInEnv := os.LookupEnv("URLDISK_TOKEN")
	fmt.Printf("probe token-in-env=%v\n", tokenInEnv)
	c, err := nbdclient.Dial(os.Getenv("URLDISK_NBD_URI"), 10*time.Second)
	if err == nil {
		err = c.ReadAt(make([]byte, 4096), 0)
	}
	fmt.Printf("probe own-disk=%s\n", result(err))
	fmt.Println("probe done")
	time.Sleep(time.Hour)
	return 0
}

func owner(t *testing.T, path string) (uid int, mode fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid), fi.Mode().Perm()
}

// Regression: workloads ran as the agent's uid and could connect to every
// machine's NBD socket and read the token file. A machine with --run-as
// now reaches its own disk and nothing else.
func TestRunAsIsolatesWorkloads(t *testing.T) {
	other := otheruser.Get(t)
	ctx := context.Background()
	w := newWorld(t)
	// The run-as user must be able to traverse to the state directory
	// (as it can under the default /tmp) and run the probe.
	if err := os.Chmod(w.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(w.dir, "probe")
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(probe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(w.dir, "token")
	if err := os.WriteFile(tokenFile, []byte(testToken), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("URLDISK_TOKEN", testToken) // the workload must not inherit it
	a := w.startAgent("a", nil)

	if _, err := w.ops.Run(ctx, "victim", fleet.Spec{Volume: w.createVolume("v1"), Runtime: fleet.RuntimeProcess, Args: []string{"sleep", "1000"}}, "a"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	waitFor(t, "victim running", func() bool {
		st, ok := a.machine("victim")
		return ok && st.Phase == fleet.PhaseRunning
	})
	victimSock := filepath.Join(a.machineSockDir("victim"), nbdSocketName)
	spec := fleet.Spec{Volume: w.createVolume("v2"), Runtime: fleet.RuntimeProcess, Args: []string{probe}, RunAs: other.Name,
		Env: []string{probeEnv + "=1", probeTokenFile + "=" + tokenFile, probeOtherSock + "=" + victimSock}}
	if _, err := w.ops.Run(ctx, "m", spec, "a"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	console := filepath.Join(w.dir, "a", "machines", "m", "console.log")
	var out string
	waitFor(t, "the probe's report", func() bool {
		b, _ := os.ReadFile(console)
		out = string(b)
		return strings.Contains(out, "probe done")
	})
	for _, want := range []string{
		fmt.Sprintf("probe uid=%d", other.UID),
		"probe token-file=EACCES",
		"probe other-socket=EACCES",
		"probe token-in-env=false",
		"probe own-disk=ok",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("workload run as %s: want %q in its report:\n%s", other.Name, want, out)
		}
	}
	// Each machine's sockets are in a directory private to its user.
	for _, c := range []struct {
		path string
		uid  int
		mode fs.FileMode
	}{
		{filepath.Join(w.dir, "a"), os.Getuid(), rundir.Traverse},
		{a.machineSockDir("m"), other.UID, 0o700},
		{filepath.Join(a.machineSockDir("m"), nbdSocketName), other.UID, 0o600},
		{a.machineSockDir("victim"), os.Getuid(), 0o700},
		{victimSock, os.Getuid(), 0o600},
	} {
		if uid, mode := owner(t, c.path); uid != c.uid || mode != c.mode {
			t.Errorf("%s: uid %d mode %04o, want uid %d mode %04o", c.path, uid, mode, c.uid, c.mode)
		}
	}
}

// Regression: the agent used $TMPDIR/urldisk-agent-ID even when another
// user had created it 0777.
func TestStateDirOfAnotherUserRefused(t *testing.T) {
	other := otheruser.Get(t)
	shared := otheruser.SharedDir(t)
	t.Setenv("TMPDIR", shared)
	w := newWorld(t)
	hijacked := filepath.Join(shared, "urldisk-agent-a")
	other.Run(t, "mkdir", "-m", "0777", hijacked)
	a, err := New(Config{ID: "a", Fleet: w.store, CacheDir: filepath.Join(w.dir, "cache"), Listen: "tcp:127.0.0.1:0", Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background(), func(string) { t.Error("the agent ran in another user's state directory") })
	if !errors.Is(err, rundir.ErrUnsafe) || !strings.Contains(err.Error(), hijacked) || !strings.Contains(err.Error(), fmt.Sprintf("uid %d", other.UID)) {
		t.Fatalf("Run: %v, want ErrUnsafe naming %s and its owner", err, hijacked)
	}
}

// The API over TLS: https:// advertised, usable with the CA, not in
// clear text, not by a client that does not trust the CA.
func TestAPIOverTLS(t *testing.T) {
	pki := testpki.New(t)
	w := newWorld(t)
	a := w.startAgentWith("a", nil, func(c *Config) { c.TLSCert, c.TLSKey, c.TLSCA = pki.CertFile, pki.KeyFile, pki.CAFile })
	if !strings.HasPrefix(a.api, "https://127.0.0.1:") {
		t.Fatalf("API URL %s, want https://", a.api)
	}
	ctx := context.Background()
	hbs, err := w.fleet.Heartbeats(ctx)
	if err != nil || len(hbs) != 1 || hbs[0].API != a.api {
		t.Fatalf("heartbeats %+v %v: want the https:// API advertised", hbs, err)
	}
	hc, err := NewHTTPClient(pki.CAFile, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := (&Client{BaseURL: a.api, Token: testToken, HTTP: hc}).Status(ctx); err != nil || st.Host != "a" {
		t.Fatalf("status over TLS: %+v %v", st, err)
	}
	var verr *tls.CertificateVerificationError
	if err := (&Client{BaseURL: a.api, Token: testToken}).Reconcile(ctx); !errors.As(err, &verr) {
		t.Fatalf("client without the CA: %v, want a certificate verification error", err)
	}
	req, _ := http.NewRequest("GET", "http://"+strings.TrimPrefix(a.api, "https://")+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || strings.Contains(string(body), `"host"`) {
			t.Fatalf("plain HTTP to the TLS API answered %d %s", resp.StatusCode, body)
		}
	}
	if _, err := NewHTTPClient(pki.CertFile+".missing", "", ""); err == nil {
		t.Error("NewHTTPClient with a missing CA file: no error")
	}
}

// Short tokens are refused; a token file others can read and a
// non-loopback listener without TLS are warned about.
func TestTokenAndListenerChecks(t *testing.T) {
	w := newWorld(t)
	short := "short-token"
	_, err := New(Config{ID: "a", Fleet: w.store, CacheDir: filepath.Join(w.dir, "cache"), Listen: "tcp:127.0.0.1:0", Token: short})
	if !errors.Is(err, ErrWeakToken) || strings.Contains(err.Error(), short) {
		t.Fatalf("New with an 11-byte token: %v, want ErrWeakToken without the token in it", err)
	}
	var logs lockedbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	file := filepath.Join(w.dir, "token")
	if err := os.WriteFile(file, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := ReadTokenFile(file, log); err != nil || tok != testToken {
		t.Fatalf("ReadTokenFile: %q %v", tok, err)
	}
	if logs.String() != "" {
		t.Fatalf("warning for a 0600 token file: %s", logs.String())
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadTokenFile(file, log); err != nil {
		t.Fatal(err)
	}
	if s := logs.String(); !strings.Contains(s, "level=WARN") || !strings.Contains(s, "readable by other users") || !strings.Contains(s, file) || strings.Contains(s, testToken) {
		t.Fatalf("world-readable token file: log %q, want a WARN naming the file (and not the token)", s)
	}

	for _, c := range []struct {
		addr  string
		tls   bool
		warns bool
	}{{"127.0.0.1:0", false, false}, {"0.0.0.0:0", true, false}, {"0.0.0.0:0", false, true}} {
		var logs lockedbuf.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		ln, err := net.Listen("tcp", c.addr)
		if err != nil {
			t.Fatal(err)
		}
		warnCleartext(log, ln, c.tls)
		ln.Close()
		if got := strings.Contains(logs.String(), "INSECURE"); got != c.warns {
			t.Errorf("listen %s tls=%v: warned %v, want %v (%s)", c.addr, c.tls, got, c.warns, logs.String())
		}
	}
}
