// Package latencyproxy is an HTTP reverse proxy that makes a local S3 server
// (versitygw on loopback) behave like a remote object store: it waits a fixed
// delay before forwarding each request and caps the bandwidth of each request
// body and each response body separately (one token bucket per stream, not a
// global one: a real store's limit is per connection, and parallel requests
// are how a client gets more).
//
// It passes requests through unchanged. In particular the Host header is the
// one the client sent, because SigV4 signs it: the client signs for the
// proxy's address, and the server checks the signature against the Host it
// receives. Nothing is added (no X-Forwarded-*), and no compression is
// negotiated, so signed headers and bodies arrive as they were signed.
//
// Benchmarks (bench/s3proxy, bench/suite.sh's "remote" profile) and tests use
// it; it is not part of urldisk.
package latencyproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// Config says what the proxy injects. The zero value injects nothing.
type Config struct {
	// Listen is the address to listen on; "" means "127.0.0.1:0" (a free
	// loopback port).
	Listen string
	// ReadDelay is waited before forwarding each GET and HEAD (and any
	// method not listed under WriteDelay).
	ReadDelay time.Duration
	// WriteDelay is waited before forwarding each PUT, POST, DELETE and PATCH.
	WriteDelay time.Duration
	// BytesPerSecond caps each request body and each response body (per
	// stream); 0 means no cap.
	BytesPerSecond int64
	// Logger receives errors forwarding requests; nil discards them.
	Logger *slog.Logger
	// DropConditional, if not nil, removes If-None-Match and If-Match from
	// every request, so the proxy behaves like an S3 gateway that ignores
	// conditional writes: a "create if absent" overwrites. Tests use it to
	// check that urldisk refuses to write through such a store. SigV4 signs
	// both headers, so a request that had one is signed again with these
	// credentials (the server's), or the server would refuse it.
	DropConditional *Credentials
}

// Credentials sign requests the proxy has changed (see DropConditional).
type Credentials struct {
	AccessKey, SecretKey, Region string
}

// Remote is the "remote" benchmark profile of bench/suite.sh: roughly what a
// client in the same region sees from a large object store (first-byte
// latency 20 ms for reads, 30 ms for writes, 100 MB/s per stream).
func Remote() Config {
	return Config{ReadDelay: 20 * time.Millisecond, WriteDelay: 30 * time.Millisecond, BytesPerSecond: 100e6}
}

// Proxy is a running proxy. Its fields are read-only.
type Proxy struct {
	// Addr is the address it listens on, "127.0.0.1:PORT".
	Addr string
	// URL is "http://" + Addr: the endpoint to give S3 clients.
	URL string

	srv  *http.Server
	done chan error
}

// burst is the most a stream may send at once after being idle, and the
// chunk size the proxy paces in: small enough that a capped stream is smooth
// at millisecond scale, large enough that pacing costs little CPU.
const burst = 64 << 10

// Start starts a proxy to target ("http://HOST:PORT") with cfg. Close stops it.
func Start(target string, cfg Config) (*Proxy, error) {
	tu, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("parse target %q: %w", target, err)
	}
	if (tu.Scheme != "http" && tu.Scheme != "https") || tu.Host == "" {
		return nil, fmt.Errorf("target %q: want http://HOST:PORT or https://HOST:PORT", target)
	}
	if cfg.ReadDelay < 0 || cfg.WriteDelay < 0 || cfg.BytesPerSecond < 0 {
		return nil, fmt.Errorf("negative delay or bandwidth in %+v", cfg)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", listen, err)
	}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Benchmarks run dozens of requests in parallel: keep their connections
	// instead of reopening them (the default keeps 2 idle per host).
	tr.MaxIdleConnsPerHost = 1024
	tr.MaxIdleConns = 1024
	// A transport that asks for gzip itself also unzips the answer and drops
	// its Content-Length: the client would not get what the server sent.
	tr.DisableCompression = true
	rate := cfg.BytesPerSecond
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(tu)
			r.Out.Host = r.In.Host // SigV4 signed it
			if cfg.DropConditional != nil {
				if err := dropConditional(r.Out, *cfg.DropConditional); err != nil {
					log.Warn("latencyproxy: re-sign request", "method", r.In.Method, "path", r.In.URL.Path, "err", err)
				}
			}
			if rate > 0 && r.Out.Body != nil && r.Out.Body != http.NoBody {
				r.Out.Body = &limitedBody{rc: r.Out.Body, b: newBucket(rate), ctx: r.In.Context()}
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if rate > 0 && resp.Body != nil && resp.Body != http.NoBody {
				resp.Body = &limitedBody{rc: resp.Body, b: newBucket(rate), ctx: resp.Request.Context()}
			}
			return nil
		},
		Transport: tr,
		// Write response bytes as they come: buffering would bunch a
		// paced stream into bursts.
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// The path only: a presigned query string holds a signature.
			log.Warn("latencyproxy: forward request", "method", r.Method, "path", r.URL.Path, "err", err)
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := cfg.ReadDelay
		switch r.Method {
		case http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch:
			d = cfg.WriteDelay
		}
		if err := sleep(r.Context(), d); err != nil {
			return // the client has gone
		}
		rp.ServeHTTP(w, r)
	})
	p := &Proxy{
		Addr: ln.Addr().String(),
		srv:  &http.Server{Handler: h, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)},
		done: make(chan error, 1),
	}
	p.URL = "http://" + p.Addr
	go func() { p.done <- p.srv.Serve(ln) }()
	return p, nil
}

// Close stops the proxy: the listener at once, open connections too.
func (p *Proxy) Close() error {
	err := p.srv.Close()
	if serr := <-p.done; !errors.Is(serr, http.ErrServerClosed) && serr != nil {
		return fmt.Errorf("serve proxy: %w", serr)
	}
	if err != nil {
		return fmt.Errorf("close proxy: %w", err)
	}
	return nil
}

// dropConditional removes req's conditional-write headers and, if there
// were any, signs req again with c. The payload hash the client signed (its
// X-Amz-Content-Sha256, e.g. UNSIGNED-PAYLOAD) is kept: the body is unchanged.
func dropConditional(req *http.Request, c Credentials) error {
	if req.Header.Get("If-None-Match") == "" && req.Header.Get("If-Match") == "" {
		return nil
	}
	req.Header.Del("If-None-Match")
	req.Header.Del("If-Match")
	req.Header.Del("Authorization")
	payload := req.Header.Get("X-Amz-Content-Sha256")
	if payload == "" {
		return errors.New("request has no X-Amz-Content-Sha256 to sign again")
	}
	creds := aws.Credentials{AccessKeyID: c.AccessKey, SecretAccessKey: c.SecretKey}
	if err := v4.NewSigner().SignHTTP(req.Context(), creds, req, payload, "s3", c.Region, time.Now()); err != nil {
		return fmt.Errorf("sign request: %w", err)
	}
	return nil
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bucket is a token bucket for one stream: rate bytes per second, at most
// burst bytes saved up. A take may overdraw it; the debt is waited off.
type bucket struct {
	rate   float64
	tokens float64
	last   time.Time
}

func newBucket(rate int64) *bucket {
	return &bucket{rate: float64(rate), tokens: burst, last: time.Now()}
}

// take removes n tokens and waits until the bucket is no longer in debt.
func (b *bucket) take(ctx context.Context, n int) error {
	now := time.Now()
	b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return nil
	}
	return sleep(ctx, time.Duration(-b.tokens/b.rate*float64(time.Second)))
}

// limitedBody paces reads of one body through its own bucket. Each body is
// read by one goroutine (the transport's or the proxy's copy loop), so the
// bucket needs no lock.
type limitedBody struct {
	ctx context.Context
	b   *bucket
	rc  io.ReadCloser
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if len(p) > burst {
		p = p[:burst]
	}
	n, err := l.rc.Read(p)
	if n > 0 {
		if werr := l.b.take(l.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

func (l *limitedBody) Close() error { return l.rc.Close() }
