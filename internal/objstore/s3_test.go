package objstore_test

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// recordingClient records every request it sends and can answer some
// itself instead of the server.
type recordingClient struct {
	next http.Client

	mu       sync.Mutex
	requests []string // "METHOD path?query If-None-Match=..."; guarded by mu
	// fake, if set, may answer a request instead of the server.
	fake func(r *http.Request) *http.Response
}

func (c *recordingClient) Do(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.requests = append(c.requests, fmt.Sprintf("%s %s?%s If-None-Match=%s", r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("If-None-Match")))
	fake := c.fake
	c.mu.Unlock()
	if fake != nil {
		if resp := fake(r); resp != nil {
			if r.Body != nil {
				_, _ = io.Copy(io.Discard, r.Body)
				r.Body.Close()
			}
			resp.Request = r
			return resp, nil
		}
	}
	return c.next.Do(r)
}

func (c *recordingClient) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.requests
	c.requests = nil
	return r
}

// TestS3SmallObjectsAreOnePut checks that objects up to 8 MiB go as a single
// PutObject, carrying If-None-Match: * for PutIfAbsent, so the condition
// covers the whole object, and that versitygw honours it.
func TestS3SmallObjectsAreOnePut(t *testing.T) {
	srv := s3server.Start(t)
	rc := &recordingClient{}
	s := open(t, &objstore.Opener{HTTPClient: rc}, srv.URL)
	defer s.Close()
	ctx := t.Context()

	for _, size := range []int{0, 1, 8 << 20} {
		key := fmt.Sprintf("one-put/%d", size)
		data := bytes.Repeat([]byte{'x'}, size)
		rc.take()
		if err := s.PutIfAbsent(ctx, key, data); err != nil {
			t.Fatalf("PutIfAbsent %d bytes: %v", size, err)
		}
		reqs := rc.take()
		if len(reqs) != 1 || !strings.HasPrefix(reqs[0], "PUT ") || !strings.HasSuffix(reqs[0], "?x-id=PutObject If-None-Match=*") {
			t.Fatalf("PutIfAbsent of %d bytes sent %q, want one PutObject with If-None-Match: *", size, reqs)
		}
		if err := s.PutIfAbsent(ctx, key, []byte("other")); !errors.Is(err, objstore.ErrExists) {
			t.Fatalf("second PutIfAbsent of %d-byte object: err = %v, want ErrExists", size, err)
		}
		got, err := s.Get(ctx, key)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get %d-byte object: %v (equal %v)", size, err, bytes.Equal(got, data))
		}
		rc.take()
		if err := s.Put(ctx, key, data); err != nil {
			t.Fatalf("Put %d bytes: %v", size, err)
		}
		if reqs := rc.take(); len(reqs) != 1 || !strings.HasSuffix(reqs[0], "?x-id=PutObject If-None-Match=") {
			t.Fatalf("Put of %d bytes sent %q, want one unconditional PutObject", size, reqs)
		}
	}
}

// TestS3LargePutIfAbsent covers objects past the multipart threshold.
func TestS3LargePutIfAbsent(t *testing.T) {
	srv := s3server.Start(t)
	rc := &recordingClient{}
	s := open(t, &objstore.Opener{HTTPClient: rc}, srv.URL)
	defer s.Close()
	ctx := t.Context()
	data := bytes.Repeat([]byte{'y'}, 20<<20)
	if err := s.PutIfAbsent(ctx, "big", data); err != nil {
		t.Fatalf("PutIfAbsent 20 MiB: %v", err)
	}
	t.Logf("first: %q", rc.take())
	err := s.PutIfAbsent(ctx, "big", data[:17<<20])
	t.Logf("second: %q", rc.take())
	if !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("second PutIfAbsent 17 MiB: err = %v, want ErrExists", err)
	}
	if info, err := s.Stat(ctx, "big"); err != nil || info.Size != 20<<20 {
		t.Fatalf("Stat: %+v, %v", info, err)
	}
}

func fakeResponse(status int, header http.Header, body string) *http.Response {
	if header == nil {
		header = http.Header{}
	}
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", status, http.StatusText(status)),
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        header,
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
	}
}

// TestS3ConditionalConflictRetried: S3 answers 409 ConditionalRequestConflict
// while another conditional write is in flight; PutIfAbsent retries.
func TestS3ConditionalConflictRetried(t *testing.T) {
	srv := s3server.Start(t)
	var conflicts int
	rc := &recordingClient{fake: func(r *http.Request) *http.Response {
		if r.Method != http.MethodPut || conflicts >= 2 {
			return nil
		}
		conflicts++
		return fakeResponse(http.StatusConflict, http.Header{"Content-Type": {"application/xml"}},
			`<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code><Message>conflict</Message></Error>`)
	}}
	s := open(t, &objstore.Opener{HTTPClient: rc}, srv.URL)
	defer s.Close()
	if err := s.PutIfAbsent(t.Context(), "k", []byte("v")); err != nil {
		t.Fatalf("PutIfAbsent after two conflicts: %v", err)
	}
	var puts int
	for _, r := range rc.take() {
		if strings.HasPrefix(r, "PUT ") {
			puts++
		}
	}
	if puts != 3 {
		t.Fatalf("%d PUTs sent, want 3 (two conflicts, one success)", puts)
	}
	if err := s.PutIfAbsent(t.Context(), "k", []byte("w")); !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("PutIfAbsent on taken key: err = %v, want ErrExists", err)
	}
}

// TestS3TruncatedBodyIsAnError: a ranged GET whose body ends early must fail,
// not look like a short read at the end of the object.
func TestS3TruncatedBodyIsAnError(t *testing.T) {
	srv := s3server.Start(t)
	var truncate bool
	var mu sync.Mutex
	rc := &recordingClient{fake: func(r *http.Request) *http.Response {
		mu.Lock()
		defer mu.Unlock()
		if r.Method != http.MethodGet || !truncate {
			return nil
		}
		return fakeResponse(http.StatusPartialContent, http.Header{
			"Content-Range": {"bytes 0-99/1000"},
		}, strings.Repeat("z", 50))
	}}
	s := open(t, &objstore.Opener{HTTPClient: rc}, srv.URL)
	defer s.Close()
	if err := s.Put(t.Context(), "k", bytes.Repeat([]byte{'z'}, 1000)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	truncate = true
	mu.Unlock()
	n, err := s.GetRange(t.Context(), "k", 0, make([]byte, 100))
	if err == nil {
		t.Fatalf("GetRange of a truncated body = %d, nil; want an error", n)
	}
	if _, err := s.Get(t.Context(), "k"); err == nil {
		t.Fatalf("Get of a truncated body succeeded")
	}
}

// tamperClient passes requests to the server, keeping the headers of each
// PUT and, if corrupt is set, flipping one byte of its body (same length) on
// the way, as a faulty network or proxy would.
type tamperClient struct {
	next http.Client

	mu      sync.Mutex
	puts    []http.Header // guarded by mu
	corrupt bool          // guarded by mu
}

func (c *tamperClient) Do(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodPut {
		return c.next.Do(r)
	}
	c.mu.Lock()
	c.puts = append(c.puts, r.Header.Clone())
	corrupt := c.corrupt
	c.mu.Unlock()
	if corrupt && r.Body != nil {
		body, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		body[len(body)/2] ^= 0x40
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return c.next.Do(r)
}

func (c *tamperClient) takePuts() []http.Header {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.puts
	c.puts = nil
	return p
}

// TestS3PutUnsignedWithCRC32C: a PutObject body is not hashed with SHA-256
// for the signature (x-amz-content-sha256: UNSIGNED-PAYLOAD) but carries its
// CRC-32C, which versitygw checks: the data round-trips, and a body
// corrupted in transit is refused and leaves no object behind.
func TestS3PutUnsignedWithCRC32C(t *testing.T) {
	srv := s3server.Start(t)
	tc := &tamperClient{}
	s := open(t, &objstore.Opener{HTTPClient: tc}, srv.URL)
	defer s.Close()
	ctx := t.Context()

	data := make([]byte, 1<<20+123)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	if err := s.PutIfAbsent(ctx, "unsigned/a", data); err != nil {
		t.Fatalf("PutIfAbsent: %v", err)
	}
	puts := tc.takePuts()
	if len(puts) != 1 {
		t.Fatalf("%d PUTs sent, want 1", len(puts))
	}
	h := puts[0]
	if got := h.Get("X-Amz-Content-Sha256"); got != "UNSIGNED-PAYLOAD" {
		t.Errorf("x-amz-content-sha256 = %q, want UNSIGNED-PAYLOAD", got)
	}
	var want [4]byte
	binary.BigEndian.PutUint32(want[:], crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)))
	if got := h.Get("X-Amz-Checksum-Crc32c"); got != base64.StdEncoding.EncodeToString(want[:]) {
		t.Errorf("x-amz-checksum-crc32c = %q, want %q", got, base64.StdEncoding.EncodeToString(want[:]))
	}
	for k := range h {
		if k2 := strings.ToLower(k); strings.HasPrefix(k2, "x-amz-checksum-") && k2 != "x-amz-checksum-crc32c" {
			t.Errorf("extra checksum header %s: %q (computed for nothing)", k, h.Get(k))
		}
	}
	if !strings.Contains(h.Get("Authorization"), "x-amz-checksum-crc32c") {
		t.Errorf("the checksum header is not signed: Authorization %q", h.Get("Authorization"))
	}
	got, err := s.Get(ctx, "unsigned/a")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get after unsigned PUT: %v (equal %v)", err, bytes.Equal(got, data))
	}

	tc.mu.Lock()
	tc.corrupt = true
	tc.mu.Unlock()
	for _, put := range []func() error{
		func() error { return s.PutIfAbsent(ctx, "unsigned/b", data) },
		func() error { return s.Put(ctx, "unsigned/b", data) },
	} {
		if err := put(); err == nil {
			t.Fatalf("PUT of a body corrupted in transit succeeded")
		} else {
			t.Logf("corrupted body refused: %v", err)
		}
		if _, err := s.Stat(ctx, "unsigned/b"); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("Stat after the refused PUT: %v, want ErrNotFound", err)
		}
	}
	tc.mu.Lock()
	tc.corrupt = false
	tc.mu.Unlock()

	// A caller-supplied sum is sent as is: the right one stores the object,
	// a wrong one is refused.
	sp, ok := s.(objstore.SummedPutter)
	if !ok {
		t.Fatalf("the s3 store (%T) does not implement SummedPutter", s)
	}
	sum := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
	if err := sp.PutIfAbsentSummed(ctx, "unsigned/c", data, sum^1); err == nil {
		t.Fatalf("PutIfAbsentSummed with a wrong sum succeeded")
	}
	if err := sp.PutIfAbsentSummed(ctx, "unsigned/c", data, sum); err != nil {
		t.Fatalf("PutIfAbsentSummed: %v", err)
	}
	if got, err := s.Get(ctx, "unsigned/c"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get after PutIfAbsentSummed: %v (equal %v)", err, bytes.Equal(got, data))
	}
}

// getModeClient records the x-amz-checksum-mode header of every GET.
type getModeClient struct {
	next  http.Client
	mu    sync.Mutex
	modes []string // guarded by mu
}

func (c *getModeClient) Do(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet {
		c.mu.Lock()
		c.modes = append(c.modes, r.Header.Get("X-Amz-Checksum-Mode"))
		c.mu.Unlock()
	}
	return c.next.Do(r)
}

func (c *getModeClient) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.modes
	c.modes = nil
	return m
}

// TestS3GetRangeLeavesChecksumsToTheCaller: a GetRange, even of a whole
// object, does not ask for the object's checksum (x-amz-checksum-mode),
// so the SDK does not CRC every byte of the body again: the caller checks
// its own frames. Get still asks (its callers are unchanged). The bytes
// read are the object's, from versitygw.
func TestS3GetRangeLeavesChecksumsToTheCaller(t *testing.T) {
	srv := s3server.Start(t)
	gc := &getModeClient{}
	s := open(t, &objstore.Opener{HTTPClient: gc}, srv.URL)
	defer s.Close()
	body := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	if err := s.Put(t.Context(), "k", body); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, len(body)+100)
	n, err := s.GetRange(t.Context(), "k", 0, p)
	if err != nil || !bytes.Equal(p[:n], body) {
		t.Fatalf("GetRange of the whole object: %d bytes, %v; want the %d bytes put", n, err, len(body))
	}
	if modes := gc.take(); len(modes) != 1 || modes[0] != "" {
		t.Errorf("GetRange sent x-amz-checksum-mode %q; want one GET without it", modes)
	}
	if got, err := s.Get(t.Context(), "k"); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("Get: %v (equal %v)", err, bytes.Equal(got, body))
	}
	if modes := gc.take(); len(modes) != 1 || modes[0] != "ENABLED" {
		t.Errorf("Get sent x-amz-checksum-mode %q; want ENABLED, as before", modes)
	}
}

// TestS3GetRangeProgress: GetRangeProgress of a 4 MiB range from versitygw
// reads the bytes GetRange reads and reports them as they arrive: more
// than once, in increasing prefixes, the last the whole of what was read;
// a range cut by the object's end reports only what the object holds.
func TestS3GetRangeProgress(t *testing.T) {
	srv := s3server.Start(t)
	s := open(t, &objstore.Opener{}, srv.URL)
	defer s.Close()
	body := make([]byte, 4<<20)
	for i := range body {
		body[i] = byte(i * 7 / 5)
	}
	if err := s.Put(t.Context(), "k", body); err != nil {
		t.Fatal(err)
	}
	pg, ok := s.(objstore.ProgressGetter)
	if !ok {
		t.Fatalf("the S3 store (%T) does not implement ProgressGetter", s)
	}
	for _, c := range []struct{ off, len int }{{0, len(body)}, {1000, len(body)}} {
		p := make([]byte, c.len)
		var seen []int
		n, err := pg.GetRangeProgress(t.Context(), "k", int64(c.off), p, func(n int) {
			if len(seen) > 0 && n <= seen[len(seen)-1] {
				t.Errorf("progress %d after %d", n, seen[len(seen)-1])
			}
			seen = append(seen, n)
		})
		want := body[c.off:]
		if err != nil || n != len(want) || !bytes.Equal(p[:n], want) {
			t.Fatalf("GetRangeProgress at %d: %d bytes, %v; want the object's %d", c.off, n, err, len(want))
		}
		if len(seen) < 2 || seen[len(seen)-1] != n {
			t.Fatalf("GetRangeProgress at %d reported %d times (last %v) for %d bytes", c.off, len(seen), seen[len(seen)-1:], n)
		}
	}
}
