package journal

import (
	"slices"
	"strings"
	"testing"
)

func TestGaps(t *testing.T) {
	m := func(seq, durable uint64) Mark { return Mark{Seq: seq, Durable: durable} }
	dense := []Mark{m(1, 0), m(2, 1), m(3, 2), m(4, 3), m(5, 4)}
	for _, tc := range []struct {
		name        string
		base, limit uint64
		present     []Mark
		snaps       []uint64
		want        []Gap
	}{
		{name: "empty log", limit: ^uint64(0)},
		{name: "dense log", limit: ^uint64(0), present: dense},
		{
			// The case: 4 flushed writes after the fence, record 3
			// deleted; records 4 and 5 were sealed after 3 was durable.
			name: "deleted record", limit: ^uint64(0),
			present: []Mark{m(1, 0), m(2, 1), m(4, 3), m(5, 4)},
			want:    []Gap{{First: 3, Last: 3, Lost: true, ProofSeq: 5, ProofDurable: 4}},
		},
		{
			// A writer crashed with 3 and 4 in flight; 4 landed, 3 never
			// did. 4 was sealed when only 2 was durable: nothing vouches for 3.
			name: "crash leftover", limit: ^uint64(0),
			present: []Mark{m(1, 0), m(2, 1), m(4, 2)},
			want:    []Gap{{First: 3, Last: 3}},
		},
		{
			name: "version 1 records: watermark unknown", limit: ^uint64(0),
			present: []Mark{m(1, 0), m(2, 0), m(4, 0), m(5, 0)},
			want:    []Gap{{First: 3, Last: 3}},
		},
		{
			// The next writer fenced at 3 over the leftover and wrote on.
			name: "crash leftover voided by a fence", limit: ^uint64(0),
			present: []Mark{m(1, 0), m(2, 1), m(3, 2), m(4, 2), m(5, 3)},
		},
		{
			name: "a run of records deleted", limit: ^uint64(0),
			present: []Mark{m(1, 0), m(5, 4), m(6, 4)},
			want:    []Gap{{First: 2, Last: 4, Lost: true, ProofSeq: 5, ProofDurable: 4}},
		},
		{
			// The proof may be any later record, not the next one.
			name: "proof further on", limit: ^uint64(0),
			present: []Mark{m(1, 0), m(3, 1), m(4, 1), m(9, 8)},
			want: []Gap{
				{First: 2, Last: 2, Lost: true, ProofSeq: 9, ProofDurable: 8},
				{First: 5, Last: 8, Lost: true, ProofSeq: 9, ProofDurable: 8},
			},
		},
		{
			// GC collected everything at or below the snapshot replay starts from.
			name: "collected below base", base: 10, limit: ^uint64(0),
			present: []Mark{m(11, 10), m(12, 11)},
			snaps:   []uint64{3, 10},
		},
		{
			name: "deleted just after the base", base: 10, limit: ^uint64(0),
			present: []Mark{m(12, 11)},
			snaps:   []uint64{10},
			want:    []Gap{{First: 11, Last: 11, Lost: true, ProofSeq: 12, ProofDurable: 11}},
		},
		{
			// The newest snapshot was unusable and replay fell back to an
			// older one: the records it covered are gone.
			name: "snapshot newer than the head", limit: ^uint64(0),
			present: []Mark{m(1, 0), m(2, 1)},
			snaps:   []uint64{6},
			want:    []Gap{{First: 3, Last: 6, Lost: true, ProofSnap: 6}},
		},
		{
			// A point in time before the gap does not see it.
			name: "limit before the gap", limit: 2,
			present: []Mark{m(1, 0), m(2, 1), m(4, 3), m(5, 4)},
		},
		{
			name: "unsorted input with duplicates", limit: ^uint64(0),
			present: []Mark{m(5, 4), m(1, 0), m(4, 3), m(1, 0), m(2, 1)},
			want:    []Gap{{First: 3, Last: 3, Lost: true, ProofSeq: 5, ProofDurable: 4}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Gaps(tc.base, tc.limit, tc.present, tc.snaps)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Gaps = %+v, want %+v", got, tc.want)
			}
			g, lost := FirstLoss(got)
			wantLost := slices.ContainsFunc(tc.want, func(g Gap) bool { return g.Lost })
			if lost != wantLost || lost && !g.Lost {
				t.Fatalf("FirstLoss = %+v, %v", g, lost)
			}
		})
	}
}

func TestGapString(t *testing.T) {
	for _, tc := range []struct {
		g    Gap
		want string
	}{
		{Gap{First: 3, Last: 3, Lost: true, ProofSeq: 5, ProofDurable: 4}, "seq 3 missing, but record 5 was written after seq 4 was durable"},
		{Gap{First: 3, Last: 6, Lost: true, ProofSnap: 6}, "seqs 3-6 missing, but snapshot 6"},
		{Gap{First: 3, Last: 3}, "after a crash"},
	} {
		if s := tc.g.String(); !strings.Contains(s, tc.want) {
			t.Errorf("%+v: %q does not say %q", tc.g, s, tc.want)
		}
	}
}
