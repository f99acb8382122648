package journal

import (
	"testing"

	"github.com/urldisk/urldisk/internal/format"
)

var me = format.WriterID{1}

func rec(typ format.RecordType, seq, epoch uint64, w format.WriterID) *format.Record {
	return &format.Record{Type: typ, Seq: seq, Epoch: epoch, Writer: w, Volume: "v"}
}

func TestWriterInOrderDurability(t *testing.T) {
	w := NewWriter(2, me, 10)
	s1, _ := w.Assign(1)
	s2, _ := w.Assign(2)
	s3, _ := w.Assign(3)
	if s1 != 11 || s2 != 12 || s3 != 13 {
		t.Fatalf("slots %d %d %d", s1, s2, s3)
	}
	w.Landed(12)
	if w.DurableSeg() != 0 {
		t.Fatalf("segment 2 durable before 1: %d", w.DurableSeg())
	}
	w.Landed(11)
	if w.DurableSeg() != 2 || w.Prefix() != 12 {
		t.Fatalf("durable %d prefix %d", w.DurableSeg(), w.Prefix())
	}
	// Lost response: the slot holds our own record.
	if _, j := w.Taken(13, rec(format.RecordData, 13, 2, me)); j != Mine {
		t.Fatalf("own record judged %v", j)
	}
	if w.DurableSeg() != 3 {
		t.Fatalf("durable %d", w.DurableSeg())
	}
	if _, err := w.Assign(3); err == nil {
		t.Fatal("reassigning an old segment accepted")
	}
}

func TestWriterMovesPastVoidRecords(t *testing.T) {
	w := NewWriter(2, me, 10)
	w.Assign(1) // 11
	w.Assign(2) // 12
	w.Assign(3) // 13
	w.Landed(13)
	moves, j := w.Taken(11, rec(format.RecordData, 11, 1, format.WriterID{9}))
	if j != Skip {
		t.Fatalf("void judged %v", j)
	}
	want := []Move{{1, 11, 14}, {2, 12, 15}, {3, 13, 16}}
	if len(moves) != len(want) {
		t.Fatalf("moves %+v", moves)
	}
	for i := range want {
		if moves[i] != want[i] {
			t.Fatalf("moves %+v want %+v", moves, want)
		}
	}
	w.Landed(14)
	w.Landed(15)
	w.Landed(16)
	if w.DurableSeg() != 0 {
		t.Fatal("durable while slot 12 (moved from, still pending) may leave a gap")
	}
	w.Landed(12) // old copy landed: resolved, no gap
	if w.DurableSeg() != 3 || w.Prefix() != 16 {
		t.Fatalf("durable %d prefix %d", w.DurableSeg(), w.Prefix())
	}
}

func TestWriterFenced(t *testing.T) {
	w := NewWriter(2, me, 10)
	w.Assign(1)
	w.Assign(2)
	w.Landed(11)
	if _, j := w.Taken(12, rec(format.RecordFence, 12, 3, format.WriterID{7})); j != Fenced {
		t.Fatalf("fence judged %v", j)
	}
	if !w.Fenced() || w.DurableSeg() != 1 {
		t.Fatalf("fenced %v durable %d", w.Fenced(), w.DurableSeg())
	}
	if _, err := w.Assign(3); err == nil {
		t.Fatal("fenced writer assigned a slot")
	}
	// Newer-epoch data is fencing too.
	w2 := NewWriter(2, me, 10)
	w2.Assign(1)
	if _, j := w2.Taken(11, rec(format.RecordData, 11, 3, format.WriterID{7})); j != Fenced {
		t.Fatalf("newer data judged %v", j)
	}
}

func TestReplayRules(t *testing.T) {
	a, b := format.WriterID{1}, format.WriterID{2}
	st := State{}
	steps := []struct {
		r    *format.Record
		want Verdict
	}{
		{rec(format.RecordFence, 1, 1, a), Fence},
		{rec(format.RecordData, 2, 1, a), Apply},
		{rec(format.RecordFence, 3, 2, b), Fence},
		{rec(format.RecordData, 4, 1, a), Void}, // zombie leftover
		{rec(format.RecordData, 5, 2, b), Apply},
		{rec(format.RecordFence, 6, 2, a), Void}, // stale fence
		{rec(format.RecordData, 7, 2, a), Void},  // same epoch, other writer
	}
	for _, s := range steps {
		var v Verdict
		var err error
		st, v, err = Replay(st, s.r)
		if err != nil || v != s.want {
			t.Fatalf("seq %d: %v %v want %v", s.r.Seq, v, err, s.want)
		}
	}
	if _, _, err := Replay(st, rec(format.RecordData, 9, 2, b)); err == nil {
		t.Fatal("gap accepted")
	}
}
