// Command s3proxy puts a remote object store's latency and per-stream
// bandwidth in front of a local S3 server, for benchmarks (bench/suite.sh's
// "remote" profile). It is internal/testutil/latencyproxy with flags:
//
//	s3proxy -target http://127.0.0.1:7070 [-listen 127.0.0.1:7071]
//	        [-get-delay 20ms] [-put-delay 30ms] [-mbps 100]
//
// -get-delay is waited before each GET and HEAD, -put-delay before each PUT,
// POST and DELETE; -mbps caps each request body and each response body at
// that many MB/s (10^6 bytes), one token bucket per stream (0: no cap).
// Requests pass through unchanged (the client's Host header too: SigV4
// signs it), so clients sign for the proxy's address. When it listens, it
// prints "listening http://ADDR" on stdout; SIGINT/SIGTERM stop it.
// This is a benchmark helper, not part of urldisk.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urldisk/urldisk/internal/testutil/latencyproxy"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "s3proxy:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	def := latencyproxy.Remote()
	fs := flag.NewFlagSet("s3proxy", flag.ExitOnError)
	target := fs.String("target", "", "S3 endpoint to forward to, http://HOST:PORT (required)")
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	getDelay := fs.Duration("get-delay", def.ReadDelay, "delay before each GET/HEAD")
	putDelay := fs.Duration("put-delay", def.WriteDelay, "delay before each PUT/POST/DELETE")
	mbps := fs.Float64("mbps", float64(def.BytesPerSecond)/1e6, "per-stream bandwidth cap in MB/s (10^6 bytes); 0 = none")
	_ = fs.Parse(args)
	if *target == "" || fs.NArg() != 0 {
		return errors.New("usage: s3proxy -target http://HOST:PORT [-listen ADDR] [-get-delay D] [-put-delay D] [-mbps N]")
	}
	if *mbps < 0 {
		return fmt.Errorf("-mbps %v: must be >= 0", *mbps)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	p, err := latencyproxy.Start(*target, latencyproxy.Config{
		Listen: *listen, ReadDelay: *getDelay, WriteDelay: *putDelay,
		BytesPerSecond: int64(*mbps * 1e6), Logger: log,
	})
	if err != nil {
		return err
	}
	fmt.Println("listening", p.URL)
	log.Info("s3proxy started", "listen", p.URL, "target", *target, "get_delay", *getDelay, "put_delay", *putDelay, "mbps", *mbps)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return p.Close()
}
