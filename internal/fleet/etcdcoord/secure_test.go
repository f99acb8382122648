package etcdcoord

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/testutil/etcdcluster"
	"github.com/urldisk/urldisk/internal/testutil/testpki"
)

// TestEtcdTLSAndAuth runs a real 3-member cluster that requires client
// certificates and has auth on, with a user limited to the fleet's prefix:
// the fleet works through it with the password from a file or the
// environment; a missing certificate, a missing or wrong password and
// another prefix are errors at Open that say what is wrong and never
// show the password.
func TestEtcdTLSAndAuth(t *testing.T) {
	const pw = "pw-s3cret-17"
	c := etcdcluster.StartWith(t, etcdcluster.Options{PKI: testpki.New(t)})
	c.EnableAuth("fleet", pw, "sec/")
	ctx := context.Background()
	hosts := strings.Join(c.Clients, ",")
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	url := func(userPrefix, query string) string {
		return "etcd://" + userPrefix + hosts + "/" + query
	}
	tlsq := c.TLSQuery()

	// Works: password from the file, then from the environment.
	co, err := Open(ctx, url("fleet@", "sec?"+tlsq+"&password-file="+pwFile), Options{})
	if err != nil {
		t.Fatalf("Open with TLS and password file: %v", err)
	}
	defer co.Close()
	if err := co.PutHeartbeat(ctx, &fleet.Heartbeat{Host: "h1", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := fleet.Update(ctx, co, "m", "t", func(cur *fleet.Placement) (*fleet.Placement, error) {
		return fleet.NextRun(cur, "m", spec("m"), "h1", time.Now())
	}); err != nil {
		t.Fatalf("Update through TLS and auth: %v", err)
	}
	t.Setenv(EnvPassword, pw)
	co2, err := Open(ctx, url("fleet@", "sec?"+tlsq), Options{Self: "h1"})
	if err != nil {
		t.Fatalf("Open with password from $%s: %v", EnvPassword, err)
	}
	defer co2.Close()
	got, err := co2.Assigned(ctx, "h1")
	if err != nil || len(got) != 1 || got["m"] == nil {
		t.Fatalf("Assigned through TLS and auth: %v %v", got, err)
	}

	bad := []struct {
		name, url, env, want string
	}{
		{"CA file missing", url("fleet@", "sec?cacert="+filepath.Dir(pwFile)+"/none"), pw, "read etcd CA"},
		{"CA only, no client certificate", url("fleet@", "sec?cacert="+strings.Split(strings.Split(tlsq, "cacert=")[1], "&")[0]), pw, "certificate required"},
		{"plain http to TLS members", url("fleet@", "sec"), pw, "no member answered"},
		{"no password", url("fleet@", "sec?"+tlsq), "", EnvPassword},
		{"wrong password", url("fleet@", "sec?"+tlsq), "wrong-" + pw, "authentication failed"},
		{"no user", url("", "sec?"+tlsq), "", "permission denied"},
		{"prefix not granted", url("fleet@", "other?"+tlsq), pw, "permission denied"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			t.Setenv(EnvPassword, b.env)
			octx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			co, err := Open(octx, b.url, Options{})
			if err == nil {
				co.Close()
				t.Fatalf("Open succeeded, want an error containing %q", b.want)
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), b.want) {
				t.Errorf("error %q does not say %q", err, b.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows the password: %v", err)
			}
			if errors.Is(err, ErrBadURL) {
				t.Errorf("a connection error reported as a bad URL: %v", err)
			}
		})
	}
}
