package objstore_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
)

// setAzureTestEnv gives the azblob:// backend a well-formed shared key and
// nothing else from the environment.
func setAzureTestEnv(t *testing.T) {
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", "")
	t.Setenv("AZURE_STORAGE_ACCOUNT", "devstoreaccount1")
	t.Setenv("AZURE_STORAGE_KEY", "a2V5") // base64 "key"
}

// closedAddr returns a loopback address where nothing listens: connecting
// is refused at once.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// silentAddr returns a loopback address that accepts connections and never
// answers, as a stopped (SIGSTOP) server.
func silentAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

func cloudURLs(addr string) map[string]string {
	return map[string]string{
		"gs":     "gs://bucket/pool?endpoint=http://" + addr,
		"azblob": "azblob://container/pool?endpoint=http://" + addr + "/devstoreaccount1",
	}
}

// Regression: the GCS client retries a refused connection until the
// context ends (never, without a deadline) and Azure's for minutes; both
// now give up after a few attempts, as s3:// does.
func TestCloudUnreachableFailsFast(t *testing.T) {
	setAzureTestEnv(t)
	t.Setenv("STORAGE_EMULATOR_HOST", "")
	for scheme, u := range cloudURLs(closedAddr(t)) {
		t.Run(scheme, func(t *testing.T) {
			s, err := objstore.Open(t.Context(), u)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			start := time.Now()
			err = s.PutIfAbsent(ctx, "log/1", []byte("x"))
			took := time.Since(start)
			if err == nil {
				t.Fatal("PutIfAbsent to a closed port succeeded")
			}
			if errors.Is(err, objstore.ErrExists) || errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want a connection error", err)
			}
			if took > 20*time.Second {
				t.Errorf("PutIfAbsent to a closed port took %s, want a few seconds", took)
			}
		})
	}
}

// A request's context deadline bounds it on a stalled store.
func TestCloudDeadlineBoundsStall(t *testing.T) {
	setAzureTestEnv(t)
	t.Setenv("STORAGE_EMULATOR_HOST", "")
	for scheme, u := range cloudURLs(silentAddr(t)) {
		t.Run(scheme, func(t *testing.T) {
			s, err := objstore.Open(t.Context(), u)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			err = s.PutIfAbsent(ctx, "log/1", []byte("x"))
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("PutIfAbsent on a stalled store: err = %v, want DeadlineExceeded", err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("PutIfAbsent with a 1s deadline took %s", took)
			}
		})
	}
}
