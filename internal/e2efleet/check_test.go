package e2efleet

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

const counterBlock = 4096

// counterDisk is what the counter left on its volume.
type counterDisk struct {
	header  uint64
	writers []string // writers[i] wrote record i (index 0 unused)
}

// readCounterDisk opens the volume read-only (no fencing) and decodes the
// counter's header and records 1..header.
func (e *env) readCounterDisk(name string) counterDisk {
	e.t.Helper()
	ctx := context.Background()
	p, err := volume.OpenPool(ctx, e.store, volume.PoolOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	v, err := p.Open(ctx, name, volume.Options{ReadOnly: true})
	if err != nil {
		e.t.Fatal(err)
	}
	defer v.Close(ctx)
	hdr := make([]byte, counterBlock)
	if err := v.ReadAt(ctx, hdr, 0); err != nil {
		e.t.Fatal(err)
	}
	if !bytes.Equal(hdr[:8], []byte("URLDCTR1")) {
		e.t.Fatalf("counter header missing on the disk: %q", hdr[:32])
	}
	d := counterDisk{header: binary.LittleEndian.Uint64(hdr[8:])}
	recs := make([]byte, d.header*counterBlock)
	if err := v.ReadAt(ctx, recs, counterBlock); err != nil {
		e.t.Fatal(err)
	}
	d.writers = make([]string, d.header+1)
	for i := uint64(1); i <= d.header; i++ {
		b := recs[(i-1)*counterBlock : i*counterBlock]
		if !bytes.Equal(b[:8], []byte("URLDCTR1")) {
			e.t.Fatalf("record %d missing on the disk (header says %d): a gap", i, d.header)
		}
		if got := binary.LittleEndian.Uint64(b[8:]); got != i {
			e.t.Fatalf("record %d holds value %d", i, got)
		}
		d.writers[i] = string(b[16:32])
	}
	return d
}

// checkCounter checks the counter's guarantees against its acks file:
//
//  1. No acknowledged write is lost: the disk's header H is at least the
//     largest acknowledged value, and for every "ack N W" line, record N
//     on the disk was written by W (the value W made durable is the one
//     that survived, not another writer's).
//  2. No gaps: records 1..H are all present and record i holds i (checked
//     by readCounterDisk). So after every move the new writer continued
//     from exactly where the durable state ended.
//  3. One writer at a time: along 1..H each writer's records form one
//     contiguous run (no interleaving of two writers), each writer's acks
//     are consecutive values, and writers' ack ranges do not overlap.
//
// It returns the writers in order of their runs.
func (e *env) checkCounter(name string, acks []ackLine) []string {
	e.t.Helper()
	d := e.readCounterDisk(name)
	var maxAck uint64
	lastByWriter := map[string]uint64{}
	firstByWriter := map[string]uint64{}
	for _, a := range acks {
		if a.kind != "ack" {
			continue
		}
		maxAck = max(maxAck, a.value)
		if a.value > d.header {
			e.t.Fatalf("acknowledged value %d (writer %s on %s) is beyond the disk's header %d: LOST", a.value, a.writer, a.host, d.header)
		}
		if got := d.writers[a.value]; got != a.writer {
			e.t.Fatalf("record %d on disk was written by %s, but %s (on %s) had it acknowledged: LOST", a.value, got, a.writer, a.host)
		}
		if last, ok := lastByWriter[a.writer]; ok && a.value != last+1 {
			e.t.Fatalf("writer %s acknowledged %d after %d", a.writer, a.value, last)
		}
		if _, ok := firstByWriter[a.writer]; !ok {
			firstByWriter[a.writer] = a.value
		}
		lastByWriter[a.writer] = a.value
	}
	if maxAck == 0 {
		e.t.Fatal("nothing was acknowledged")
	}
	// Runs of writers along the disk.
	var runs []string
	seen := map[string]bool{}
	for i := uint64(1); i <= d.header; i++ {
		w := d.writers[i]
		if len(runs) > 0 && runs[len(runs)-1] == w {
			continue
		}
		if seen[w] {
			e.t.Fatalf("writer %s wrote records in two separate runs (again at %d): two writers interleaved", w, i)
		}
		seen[w] = true
		runs = append(runs, w)
	}
	// Ack ranges of different writers are disjoint and ordered like runs.
	type span struct {
		w           string
		first, last uint64
	}
	var spans []span
	for w, f := range firstByWriter {
		spans = append(spans, span{w, f, lastByWriter[w]})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].first < spans[j].first })
	for i := 1; i < len(spans); i++ {
		if spans[i].first <= spans[i-1].last {
			e.t.Fatalf("writers %s [%d..%d] and %s [%d..%d] acknowledged overlapping values", spans[i-1].w, spans[i-1].first, spans[i-1].last, spans[i].w, spans[i].first, spans[i].last)
		}
	}
	e.t.Logf("counter disk: header %d, max acknowledged %d, %d writer runs", d.header, maxAck, len(runs))
	return runs
}

// logSummary is what the volume's log says about writers.
type logSummary struct {
	fences []uint64 // epochs of fence records, in log order
	void   int      // data records of an older epoch after a newer fence
	data   int
}

// checkLog reads every record of the volume's log and checks the journal's
// one-writer rule: each epoch's data records all come from the writer that
// fenced that epoch, and epochs only grow along the log. Records of an
// older epoch after a newer fence (a fenced writer's leftovers) are void;
// they are counted.
func (e *env) checkLog(name string) logSummary {
	e.t.Helper()
	ctx := context.Background()
	p, err := volume.OpenPool(ctx, e.store, volume.PoolOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	desc, err := p.Resolve(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	var keys []string
	if err := e.store.List(ctx, format.LogPrefix(desc.ID), func(oi objstore.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	sort.Strings(keys)
	var s logSummary
	fenceWriter := map[uint64]format.WriterID{}
	var epoch uint64
	var lines []string
	for _, k := range keys {
		b, err := e.store.Get(ctx, k)
		if err != nil {
			e.t.Fatal(err)
		}
		r, err := format.DecodeRecord(b, int64(len(b)))
		if err != nil {
			e.t.Fatalf("%s: %v", k, err)
		}
		switch r.Type {
		case format.RecordFence:
			if r.Epoch <= epoch {
				e.t.Fatalf("fence of epoch %d at seq %d after epoch %d", r.Epoch, r.Seq, epoch)
			}
			if w, ok := fenceWriter[r.Epoch]; ok && w != r.Writer {
				e.t.Fatalf("epoch %d fenced by two writers", r.Epoch)
			}
			fenceWriter[r.Epoch] = r.Writer
			epoch = r.Epoch
			s.fences = append(s.fences, r.Epoch)
			lines = append(lines, fmt.Sprintf("seq %d fence epoch %d writer %s", r.Seq, r.Epoch, r.Writer))
		case format.RecordData:
			s.data++
			if w, ok := fenceWriter[r.Epoch]; !ok || w != r.Writer {
				e.t.Fatalf("data record %d of epoch %d by writer %s, but epoch %d was fenced by %s", r.Seq, r.Epoch, r.Writer, r.Epoch, w)
			}
			if r.Epoch < epoch {
				s.void++
				lines = append(lines, fmt.Sprintf("seq %d VOID data of epoch %d (current %d)", r.Seq, r.Epoch, epoch))
			}
		}
	}
	e.t.Logf("volume log: %d fences (epochs %v), %d data records, %d void\n%s", len(s.fences), s.fences, s.data, s.void, strings.Join(lines, "\n"))
	return s
}
