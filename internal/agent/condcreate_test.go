package agent

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
)

// TestAgentRefusesStoreWithoutConditionalCreate: an agent whose fleet store
// overwrites on create-if-absent (placement versions would not be
// single-writer) refuses to start with fleet.ErrNoConditionalCreate and
// never heartbeats; before, it ran.
func TestAgentRefusesStoreWithoutConditionalCreate(t *testing.T) {
	w := newWorld(t)
	bad := faultstore.New(w.store, faultstore.Hooks{NoConditionalCreate: true})
	a, err := New(Config{ID: "a", Fleet: bad, CacheDir: filepath.Join(w.dir, "cache"), StateDir: filepath.Join(w.dir, "state"),
		Listen: "tcp:127.0.0.1:0", Token: testToken, HeartbeatInterval: 100 * time.Millisecond, HeartbeatTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Run(ctx, nil); !errors.Is(err, fleet.ErrNoConditionalCreate) {
		t.Fatalf("Run on a store without conditional create: %v, want fleet.ErrNoConditionalCreate", err)
	}
	var hb []string
	if err := w.store.List(ctx, fleet.AgentsPrefix, func(oi objstore.ObjectInfo) error { hb = append(hb, oi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(hb) != 0 {
		t.Errorf("refused agent heartbeated: %v", hb)
	}
}
