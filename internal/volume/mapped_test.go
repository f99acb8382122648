package volume

import (
	"bytes"
	"context"
	"slices"
	"testing"
)

// TestMappedRanges: the iterator yields exactly the written ranges (merged
// when adjacent, whether pending in memory or durable in records), not the
// ranges written as zeros or trimmed; it sees one instant, so writes while
// iterating do not show; and a reopened volume yields the same ranges.
func TestMappedRanges(t *testing.T) {
	ctx := context.Background()
	p := initPool(t, openStore(t, "mem://mappedranges"))
	if _, err := p.Create(ctx, "v", CreateOptions{Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	v, err := p.Open(ctx, "v", Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xa5}, 256<<10)
	write := func(off int64, n int) {
		t.Helper()
		if err := v.WriteAt(ctx, data[:n], off); err != nil {
			t.Fatal(err)
		}
	}
	if got := slices.Collect(v.MappedRanges()); len(got) != 0 {
		t.Fatalf("fresh volume: MappedRanges = %v, want none", got)
	}
	write(1<<20, 64<<10)
	if err := v.Flush(ctx); err != nil { // durable record ...
		t.Fatal(err)
	}
	write(1<<20+64<<10, 64<<10) // ... continued by a pending segment: one range
	write(10<<20, 256<<10)
	if err := v.WriteZeroes(ctx, 10<<20+64<<10, 64<<10); err != nil { // a hole inside
		t.Fatal(err)
	}
	write(20<<20, 4<<10)
	if err := v.Trim(ctx, 20<<20, 4<<10); err != nil { // written, then trimmed away
		t.Fatal(err)
	}
	write(63<<20, 256<<10) // at the end of the volume (64 MiB)
	want := []Range{
		{Off: 1 << 20, Len: 128 << 10},
		{Off: 10 << 20, Len: 64 << 10},
		{Off: 10<<20 + 128<<10, Len: 128 << 10},
		{Off: 63 << 20, Len: 256 << 10},
	}
	if got := slices.Collect(v.MappedRanges()); !slices.Equal(got, want) {
		t.Fatalf("MappedRanges = %v, want %v", got, want)
	}

	// A write while iterating is not seen by that iteration (one instant),
	// and the volume lock is not held while the caller works.
	var during []Range
	for r := range v.MappedRanges() {
		if len(during) == 0 {
			write(30<<20, 4<<10)
		}
		during = append(during, r)
	}
	if !slices.Equal(during, want) {
		t.Fatalf("MappedRanges while writing = %v, want the ranges before the write %v", during, want)
	}
	want = slices.Insert(want, 3, Range{Off: 30 << 20, Len: 4 << 10})

	// Stopping early is allowed.
	for range v.MappedRanges() {
		break
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ro, err := p.Open(ctx, "v", Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close(ctx)
	if got := slices.Collect(ro.MappedRanges()); !slices.Equal(got, want) {
		t.Fatalf("reopened: MappedRanges = %v, want %v", got, want)
	}
}
