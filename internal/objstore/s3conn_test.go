package objstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"

	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// countConn counts the writes to a real connection.
type countConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func randomBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// putThrough PUTs body (of known length, as the S3 SDK sends it) with a
// net/http client whose connections are dialled by dial, to a real HTTP
// server, and returns the SHA-256 of what the server received.
func putThrough(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error), body []byte) [32]byte {
	t.Helper()
	got := make(chan [32]byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("server: read body: %v", err)
		}
		got <- sha256.Sum256(b)
	}))
	defer srv.Close()
	c := &http.Client{Transport: &http.Transport{DialContext: dial}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, srv.URL+"/bucket/key", io.NopCloser(bytes.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len(body))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("PUT: %v", err)
	}
	resp.Body.Close()
	return <-got
}

// TestWriteToDialerSendsBodyInOneWrite: through writeToDialer a body of
// known length reaches a real HTTP server byte for byte in a few writes
// (headers, then the body at once), where the plain dial takes one write
// per 32 KiB buffer.
func TestWriteToDialerSendsBodyInOneWrite(t *testing.T) {
	body := randomBytes(4<<20+12345, 3)
	want := sha256.Sum256(body)
	var d net.Dialer
	counting := func(n *atomic.Int64) func(ctx context.Context, network, addr string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countConn{c, n}, nil
		}
	}
	var plain, wrapped atomic.Int64
	if got := putThrough(t, counting(&plain), body); got != want {
		t.Fatalf("plain dial: the server received other bytes")
	}
	if got := putThrough(t, writeToDialer(counting(&wrapped)), body); got != want {
		t.Fatalf("writeToDialer: the server received other bytes")
	}
	if wrapped.Load() > 4 || plain.Load() < 100 {
		t.Fatalf("%d writes through writeToDialer, %d through the plain dial: want at most 4 and the plain dial's 32 KiB steps (over 100)", wrapped.Load(), plain.Load())
	}
}

// TestS3PutSendsRecordInOneWrite: through the S3 SDK to a real versitygw,
// a PutObject body reaches writeToConn with its WriteTo (the SDK's wrappers
// keep it), so a 4 MiB record goes out in a few writes and round-trips;
// and the store's default client dials through writeToDialer.
func TestS3PutSendsRecordInOneWrite(t *testing.T) {
	srv := s3server.Start(t)
	var writes atomic.Int64
	client := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		dial := tr.DialContext
		tr.DialContext = writeToDialer(func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countConn{c, &writes}, nil
		})
	})
	o := &Opener{HTTPClient: client}
	s, err := o.Open(t.Context(), srv.NewBucket(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := randomBytes(4<<20+777, 7)
	before := writes.Load()
	if err := s.(SummedPutter).PutIfAbsentSummed(t.Context(), "log/1", data, crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))); err != nil {
		t.Fatalf("PutIfAbsentSummed: %v", err)
	}
	if n := writes.Load() - before; n > 4 {
		t.Fatalf("a 4 MiB PUT took %d writes to the connection: its body did not reach writeToConn with WriteTo", n)
	}
	if got, err := s.Get(t.Context(), "log/1"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get after the PUT: %v (equal %v)", err, bytes.Equal(got, data))
	}

	tr := newS3HTTPClient(time.Minute).GetTransport()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := url.Parse(u.Query().Get("endpoint"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tr.DialContext(t.Context(), "tcp", ep.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(writeToConn); !ok {
		t.Fatalf("the S3 store's HTTP client dials %T, not through writeToDialer", c)
	}
}

// TestWriteToConnKeepsTheLimit: writeToConn.ReadFrom sends a limited body
// exactly and counts it off the limit: a body longer than its limit sends
// only the limit and fails; bodies without WriteTo, or not limited, are
// copied as before.
func TestWriteToConnKeepsTheLimit(t *testing.T) {
	body := randomBytes(1<<20, 5)
	cases := []struct {
		name    string
		src     func() io.Reader
		limit   int64 // 0: not limited
		want    []byte
		wantErr error
	}{
		{"exact", func() io.Reader { return bytes.NewReader(body) }, int64(len(body)), body, nil},
		{"longer than the limit", func() io.Reader { return bytes.NewReader(body) }, 1000, body[:1000], errBodyLonger},
		{"shorter than the limit", func() io.Reader { return bytes.NewReader(body[:10]) }, 1000, body[:10], nil},
		{"no WriteTo", func() io.Reader { return struct{ io.Reader }{bytes.NewReader(body)} }, 5000, body[:5000], nil},
		{"not limited", func() io.Reader { return bytes.NewReader(body) }, 0, body, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan []byte, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(c)
				got <- b
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			r := tc.src()
			var lr *io.LimitedReader
			if tc.limit > 0 {
				lr = &io.LimitedReader{R: r, N: tc.limit}
				r = lr
			}
			n, err := writeToConn{c}.ReadFrom(r)
			c.Close()
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("ReadFrom: %v, want %v", err, tc.wantErr)
			}
			if n != int64(len(tc.want)) {
				t.Fatalf("ReadFrom sent %d bytes, want %d", n, len(tc.want))
			}
			if lr != nil && lr.N != tc.limit-n {
				t.Fatalf("limit %d left at %d after sending %d bytes", tc.limit, lr.N, n)
			}
			if b := <-got; !bytes.Equal(b, tc.want) {
				t.Fatalf("peer received %d bytes, not the %d expected", len(b), len(tc.want))
			}
		})
	}
}
