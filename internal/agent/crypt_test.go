package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/volume"
)

// TestEncryptedVolumeMachine: an agent given the key runs a machine on an
// encrypted volume, which writes and reads back through its NBD export; on
// an agent without the key (or with another key) the machine fails to start
// with an error naming the volume's key fingerprint, and serves nothing.
func TestEncryptedVolumeMachine(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	key, err := volume.ParseKey([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := volume.ParseKey([]byte("fedcba9876543210fedcba9876543210"))
	if err != nil {
		t.Fatal(err)
	}
	source := func(k *volume.Key) volume.KeySource {
		return func(context.Context) (*volume.Key, error) { return k, nil }
	}
	p, err := volume.OpenPool(ctx, w.store, volume.PoolOptions{Key: source(key)})
	if err != nil {
		t.Fatal(err)
	}
	withKey := w.startAgentWith("a", nil, func(c *Config) { c.Key = source(key) })
	noKey := w.startAgent("b", nil)
	wrongKey := w.startAgentWith("c", nil, func(c *Config) { c.Key = source(other) })
	for _, c := range []struct {
		host string
		a    *testAgent
		want string // in the machine's error; "" = it runs
	}{
		{"a", withKey, ""},
		{"b", noKey, "no key was given"},
		{"c", wrongKey, "wrapped by the key with fingerprint " + key.Fingerprint()},
	} {
		name := "m" + c.host
		if _, err := p.Create(ctx, name, volume.CreateOptions{Size: 16 << 20, Encrypt: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.ops.Run(ctx, name, helperSpec(t, w.poolURL+"/"+name, "sealed!", true), c.host); err != nil {
			t.Fatal(err)
		}
		c.a.Reconcile()
		if c.want == "" {
			waitFor(t, "helper wrote and read back on "+c.host, func() bool {
				return strings.Contains(w.console(c.host, name), "helper ok")
			})
			continue
		}
		waitFor(t, "machine failed on "+c.host, func() bool {
			st, ok := c.a.machine(name)
			return ok && st.Phase == fleet.PhaseFailed && strings.Contains(st.Error, c.want)
		})
		if out := w.console(c.host, name); out != "" {
			t.Fatalf("machine on %s started without the volume's key:\n%s", c.host, out)
		}
	}
}
