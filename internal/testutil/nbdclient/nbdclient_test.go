package nbdclient

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/nbd"
	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

func TestAgainstOurServer(t *testing.T) {
	disk := nbdtest.NewRAMDisk(1<<20, 4096, false)
	srv, err := nbd.NewServer(nbd.Options{Exports: map[string]nbd.Export{"d": {Device: disk}}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := nbd.Listen("unix:" + filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	uri, err := nbd.URI(ln.Addr(), "d", false)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(uri, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != 1<<20 {
		t.Fatalf("size %d", c.Size())
	}
	want := bytes.Repeat([]byte("urldisk!"), 512)
	if err := c.WriteAt(want, 8192); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if err := c.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back: %v", err)
	}
	if disk.Flushes() != 1 {
		t.Fatalf("flushes %d", disk.Flushes())
	}
	disk.InjectError(nbdtest.OpFlush, blockdev.ErrFenced)
	var ne *Error
	if err := c.Flush(); !errors.As(err, &ne) {
		t.Fatalf("failed flush: %v", err)
	}
	c.Close()
	// A fenced export is refused to new clients (the server marks it fenced
	// after the first ErrFenced), with the server's reason in the error.
	if _, err := Dial(uri, time.Second); err == nil || !strings.Contains(err.Error(), "fenced") {
		t.Fatalf("re-dial of a fenced export: %v, want a refusal naming the fence", err)
	}
	disk2 := nbdtest.NewRAMDisk(1<<20, 4096, false)
	disk2.SetBytes(8192, want)
	srv2, err := nbd.NewServer(nbd.Options{Exports: map[string]nbd.Export{"d": {Device: disk2}}})
	if err != nil {
		t.Fatal(err)
	}
	ln2, err := nbd.Listen("unix:" + filepath.Join(t.TempDir(), "s2.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done2 := make(chan error, 1)
	go func() { done2 <- srv2.Serve(ctx, ln2) }()
	defer func() { cancel(); <-done2 }()
	uri2, err := nbd.URI(ln2.Addr(), "d", false)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Dial(uri2, time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if err := c2.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read on a second connection: %v", err)
	}
	c2.Close()
	bad := "nbd+unix:///nope?socket=" + ln.Addr().String()
	if _, err := Dial(bad, 5*time.Second); err == nil {
		t.Fatal("unknown export accepted")
	}
}
