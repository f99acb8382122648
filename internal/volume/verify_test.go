package volume

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/format"
)

func problemKinds(r *VerifyReport) []string {
	var k []string
	for _, p := range r.Problems {
		k = append(k, p.Kind)
	}
	return k
}

func TestVerify(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T, crash bool) (*Pool, *format.VolumeDesc) {
		s := openStore(t, "mem://"+strings.ReplaceAll(t.Name(), "/", "-"))
		p := initPool(t, s)
		desc, err := p.Create(ctx, gapVol, CreateOptions{Size: 8 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if crash {
			writeFlushedMiBs(t, p, 4) // fence 1, data 2-5, no snapshot
			return p, desc
		}
		v, err := p.Open(ctx, gapVol, Options{IdleFlush: -1, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.WriteAt(ctx, make([]byte, 256<<10), 0); err != nil { // zeros: no data
			t.Fatal(err)
		}
		for i := range 4 {
			p := make([]byte, 300<<10)
			for j := range p {
				p[j] = byte(i + j)
			}
			if err := v.WriteAt(ctx, p, int64(i)<<20); err != nil {
				t.Fatal(err)
			}
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := v.Close(ctx); err != nil { // snapshot at the head
			t.Fatal(err)
		}
		return p, desc
	}
	verify := func(t *testing.T, p *Pool, deep bool) *VerifyReport {
		t.Helper()
		r, err := p.Verify(ctx, gapVol, VerifyOptions{Deep: deep})
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		return r
	}

	t.Run("healthy", func(t *testing.T) {
		p, _ := setup(t, false)
		r := verify(t, p, true)
		if !r.OK() || r.Records != 5 || r.Head != 5 || r.ChunksChecked < 4*5 {
			t.Fatalf("healthy volume: %+v", r)
		}
	})
	t.Run("deep finds a flipped byte", func(t *testing.T) {
		p, desc := setup(t, false)
		key := format.LogKey(desc.ID, 3)
		b, err := p.store.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		b[format.FramePos(2)+format.FrameHeader+100] ^= 0x40
		if err := p.store.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
		if r := verify(t, p, false); !r.OK() {
			t.Fatalf("shallow verify reads no chunks, yet: %+v", r.Problems)
		}
		r := verify(t, p, true)
		if !slices.Equal(problemKinds(r), []string{ProblemCorruptRecord}) || r.Problems[0].Key != key || !strings.Contains(r.Problems[0].Detail, "chunk 2") {
			t.Fatalf("deep verify: %+v", r.Problems)
		}
	})
	t.Run("deleted record after a crash", func(t *testing.T) {
		p, desc := setup(t, true)
		if err := p.store.Delete(ctx, format.LogKey(desc.ID, 3)); err != nil {
			t.Fatal(err)
		}
		r := verify(t, p, false)
		if !slices.Equal(problemKinds(r), []string{ProblemLogGap}) || !strings.Contains(r.Problems[0].Detail, "seq 3 missing") || !strings.Contains(r.Problems[0].Detail, "gap@2") {
			t.Fatalf("verify: %+v", r.Problems)
		}
	})
	t.Run("crash leftover is not a problem", func(t *testing.T) {
		p, desc := setup(t, true)
		// What a writer that crashed with slots 6 and 7 in flight leaves
		// when only 7 landed: sealed when 5 was the durable prefix.
		obj, err := format.EncodeRecord(&format.Record{Type: format.RecordData, Seq: 7, Epoch: 1, Volume: desc.ID, Durable: 5}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.store.Put(ctx, format.LogKey(desc.ID, 7), obj); err != nil {
			t.Fatal(err)
		}
		r := verify(t, p, false)
		if !r.OK() || len(r.Leftovers) != 1 || r.Leftovers[0].First != 6 || r.Head != 5 {
			t.Fatalf("verify: %+v", r)
		}
	})
	t.Run("snapshot references a deleted record", func(t *testing.T) {
		p, desc := setup(t, false)
		if err := p.store.Delete(ctx, format.LogKey(desc.ID, 3)); err != nil {
			t.Fatal(err)
		}
		r := verify(t, p, false)
		if !slices.Contains(problemKinds(r), ProblemDanglingSnapshot) {
			t.Fatalf("verify: %+v", r.Problems)
		}
	})
	t.Run("corrupt snapshot", func(t *testing.T) {
		p, desc := setup(t, false)
		key := format.SnapKey(desc.ID, 5)
		b, err := p.store.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 1
		if err := p.store.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
		r := verify(t, p, false)
		if !slices.Contains(problemKinds(r), ProblemCorruptSnapshot) {
			t.Fatalf("verify: %+v", r.Problems)
		}
	})
	t.Run("no such volume", func(t *testing.T) {
		p, _ := setup(t, true)
		if _, err := p.Verify(ctx, "nope", VerifyOptions{}); err == nil {
			t.Fatal("verify of a missing volume did not fail")
		}
	})
}
