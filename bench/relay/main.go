// Command relay is the floor of issue 10's loopback throughput targets: an
// NBD server that only moves bytes between NBD and S3, with urldisk's own
// NBD server and S3 client, and none of urldisk's work (no log, extent map,
// checksums or cache). Byte range [i*4MiB, (i+1)*4MiB) is object "<i>"
// under the store URL's prefix. bench/floor.sh compares it with raw S3 and
// with `urldisk serve`.
//
// Usage: relay -listen unix:PATH -store s3://BUCKET/PREFIX?endpoint=... -size BYTES [-name NAME]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urldisk/urldisk/internal/nbd"
	"github.com/urldisk/urldisk/internal/objstore"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "", "unix:PATH, tcp:HOST:PORT, or a socket path")
	storeURL := flag.String("store", "", "object store URL, e.g. s3://bucket/prefix?endpoint=...")
	size := flag.Int64("size", 0, "export size in bytes")
	name := flag.String("name", "vol", "export name")
	flag.Parse()
	if *listen == "" || *storeURL == "" || *size <= 0 {
		flag.Usage()
		return errors.New("-listen, -store and -size are required")
	}
	spec := *listen
	if !strings.HasPrefix(spec, "unix:") && !strings.HasPrefix(spec, "tcp:") {
		spec = "unix:" + spec
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	store, err := objstore.Open(ctx, *storeURL)
	if err != nil {
		return fmt.Errorf("open store %s: %w", objstore.Redact(*storeURL), err)
	}
	defer store.Close()
	// Background work (PUTs, readahead) lives until the store is closed,
	// past SIGTERM, so that the final flush below can finish.
	bg, cancelBG := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBG()
	dev := newRelay(bg, store, *size)

	srv, err := nbd.NewServer(nbd.Options{
		Exports: map[string]nbd.Export{*name: {Device: dev, Description: "urldisk bench relay"}},
		Logger:  log,
	})
	if err != nil {
		return fmt.Errorf("new NBD server: %w", err)
	}
	ln, err := nbd.Listen(spec)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	fmt.Println("ready")

	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("serve NBD: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down NBD server: %w", err)
	}
	// As serve does on SIGTERM: what clients wrote without a flush lands too.
	if err := dev.Flush(sctx); err != nil {
		return fmt.Errorf("final flush: %w", err)
	}
	return nil
}
