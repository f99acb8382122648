//go:build !race

// The race detector makes sync.Pool drop items, so allocation counts are
// only meaningful without it; this file is compiled only then.

package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
	"time"
)

// The request path, inline and on workers, does not allocate per request.
func TestRequestPathDoesNotAllocate(t *testing.T) {
	opts, _ := ramExport(1<<20, false)
	opts.Logger = nil
	srv := newTestServer(t, opts)
	path := serveUnix(t, srv)
	c := dialUnix(t, path)
	c.connect("disk")
	c.nc.SetDeadline(time.Time{})

	// Preallocated client buffers: only the server's allocations count.
	req := requestBytes(0, cmdRead, 1, 4096, 4096)
	wreq := append(requestBytes(0, cmdWrite, 2, 8192, 4096), make([]byte, 4096)...)
	reply := make([]byte, simpleReplyLen+4096)
	roundTrip := func(r []byte, withData bool) {
		if _, err := c.nc.Write(r); err != nil {
			t.Fatal(err)
		}
		n := simpleReplyLen
		if withData {
			n += 4096
		}
		if _, err := io.ReadFull(c.nc, reply[:n]); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint32(reply[4:]) != 0 {
			t.Fatal("request failed")
		}
	}
	batch := bytes.Repeat(req, 8)
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"read qd1", func() { roundTrip(req, true) }},
		{"write qd1", func() { roundTrip(wreq, false) }},
		{"read qd8", func() {
			if _, err := c.nc.Write(batch); err != nil {
				t.Fatal(err)
			}
			for range 8 {
				if _, err := io.ReadFull(c.nc, reply); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		for range 2 * inlineStreak {
			tc.f() // warm up: workers started, inline streak reached
		}
		// Timer ticks and goroutine starts elsewhere may allocate now and
		// then; a per-request allocation would show as >= 1.
		allocs := testing.AllocsPerRun(2000, tc.f)
		if allocs >= 0.5 {
			t.Errorf("%s: %v allocations per round trip", tc.name, allocs)
		}
	}
	c.disconnect()
}
