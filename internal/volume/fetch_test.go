package volume

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
)

// getRecorder records the ranged GETs of log records a volume makes.
type getRecorder struct {
	objstore.Store
	mu   sync.Mutex
	gets []recordedGet
}

type recordedGet struct {
	key      string
	off      int64
	asked, n int
}

func (s *getRecorder) GetRange(ctx context.Context, key string, off int64, p []byte) (int, error) {
	n, err := s.Store.GetRange(ctx, key, off, p)
	if strings.Contains(key, "/log/") {
		s.mu.Lock()
		s.gets = append(s.gets, recordedGet{key, off, len(p), n})
		s.mu.Unlock()
	}
	return n, err
}

func (s *getRecorder) take() []recordedGet {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.gets
	s.gets = nil
	return g
}

// TestReadaheadGetsWholeRecords: a cold sequential read fetches each full
// record with one GET of the whole object, trailer included, which a store
// can serve cheaply (versitygw: sendfile instead of a copy through user
// space), and gets the same bytes; a cold random 4 KiB read of a record's
// first chunk still asks for that one frame only. On mem and on a real S3
// server (versitygw), whose range end is clamped at the object's end.
func TestReadaheadGetsWholeRecords(t *testing.T) {
	for name, url := range backends(t) {
		if name == "file" {
			continue // same GetRange contract as mem; mem and s3 suffice
		}
		t.Run(name, func(t *testing.T) {
			const size = 16 << 20
			rs := &getRecorder{Store: openStore(t, url)}
			p := initPool(t, rs)
			model := writeModel(t, p, "v", size, false, -1)
			ctx := context.Background()

			v := openCold(t, p, "v", Options{})
			rs.take() // the attach's reads
			readSeq(t, v, model, 0, size, 1<<20, 4)
			whole := map[string]bool{}
			for _, g := range rs.take() {
				info, err := rs.Store.Stat(ctx, g.key)
				if err != nil {
					t.Fatal(err)
				}
				if g.off == 0 && int64(g.n) == info.Size && g.asked >= g.n {
					whole[g.key] = true
				}
			}
			var records int
			err := rs.Store.List(ctx, "", func(oi objstore.ObjectInfo) error {
				if strings.Contains(oi.Key, "/log/") && oi.Size > 2*format.FrameSize {
					records++
					if !whole[oi.Key] {
						t.Errorf("record %s (%d bytes) was never fetched whole by the sequential read", oi.Key, oi.Size)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if records < size/(4<<20) {
				t.Fatalf("%d data records of more than two frames; want at least %d", records, size/(4<<20))
			}

			v2 := openCold(t, p, "v", Options{})
			rs.take()
			buf := make([]byte, 4096)
			if err := v2.ReadAt(ctx, buf, 4<<20); err != nil { // a record's first chunk, if writes fill records
				t.Fatal(err)
			}
			if !bytes.Equal(buf, model[4<<20:4<<20+4096]) {
				t.Fatal("random read differs from the model")
			}
			gets := rs.take()
			if len(gets) != 1 {
				t.Fatalf("one cold 4 KiB read made %d record GETs: %+v", len(gets), gets)
			}
			if g := gets[0]; g.asked != format.FrameSize {
				t.Errorf("cold 4 KiB read at record offset %d asked for %d bytes; want one frame, %d", g.off, g.asked, format.FrameSize)
			}
		})
	}
}
