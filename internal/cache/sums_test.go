package cache

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

func TestCombineSumsMatchesChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	lengths := []int{1, 2, 100, SubBlockSize - 1, SubBlockSize, SubBlockSize + 1, 3*SubBlockSize + 17, ChunkSize - 1, ChunkSize}
	for range 50 {
		lengths = append(lengths, 1+rng.IntN(ChunkSize))
	}
	tab := crc32.MakeTable(crc32.Castagnoli)
	for _, n := range lengths {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		var s Sums
		SubBlockSums(data, &s)
		for i := range subBlocksFor(n) {
			if want := crc32.Checksum(data[i*SubBlockSize:min((i+1)*SubBlockSize, n)], tab); s[i] != want {
				t.Fatalf("len %d: sub-block %d sum %#x, want %#x", n, i, s[i], want)
			}
		}
		if got, want := CombineSums(&s, n), crc32.Checksum(data, tab); got != want {
			t.Fatalf("len %d: combined %#x, want %#x", n, got, want)
		}
	}
}

// TestCombine: the CRC-32C of A‖B from those of A and B, for lengths
// around the edge cases (empty pieces, one byte, powers of two, odd sizes).
func TestCombine(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	tab := crc32.MakeTable(crc32.Castagnoli)
	lengths := []int{0, 1, 7, 8, 4096, 65536, 65544, 1 << 20, 4<<20 + 123}
	for _, la := range lengths {
		for _, lb := range lengths {
			ab := make([]byte, la+lb)
			for i := range ab {
				ab[i] = byte(rng.Uint32())
			}
			a, b := ab[:la], ab[la:]
			want := crc32.Checksum(ab, tab)
			if got := Combine(crc32.Checksum(a, tab), crc32.Checksum(b, tab), lb); got != want {
				t.Fatalf("Combine for |A| = %d, |B| = %d: %08x, want %08x", la, lb, got, want)
			}
		}
	}
}

func TestPutSummedReadsBack(t *testing.T) {
	c := openTest(t, t.TempDir(), 8, Options{})
	data := make([]byte, ChunkSize-5)
	for i := range data {
		data[i] = byte(i * 13)
	}
	var s Sums
	SubBlockSums(data, &s)
	k := Key{Vol: "v", Seq: 1, Chunk: 2}
	if err := c.PutSummed(k, data, &s); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 100)
	if hit, err := c.ReadAt(k, got, 5000); err != nil || !hit {
		t.Fatalf("ReadAt: hit %v err %v", hit, err)
	}
	for i := range got {
		if got[i] != data[5000+i] {
			t.Fatalf("byte %d differs", i)
		}
	}
	// Wrong sums are caught on read, like a corrupt slab.
	s[0] ^= 1
	k2 := Key{Vol: "v", Seq: 1, Chunk: 3}
	if err := c.PutSummed(k2, data, &s); err != nil {
		t.Fatal(err)
	}
	if hit, _ := c.ReadAt(k2, got, 0); hit {
		t.Fatal("read verified against wrong sums")
	}
}

func TestHasCountsNothing(t *testing.T) {
	c := openTest(t, t.TempDir(), 8, Options{})
	k := Key{Vol: "v", Seq: 1, Chunk: 0}
	if c.Has(k) {
		t.Fatal("Has on an empty cache")
	}
	if err := c.Put(k, []byte("data")); err != nil {
		t.Fatal(err)
	}
	if !c.Has(k) {
		t.Fatal("Has after Put is false")
	}
	if st := c.Stats(); st.Hits != 0 || st.Misses != 0 {
		t.Fatalf("Has counted hits %d misses %d", st.Hits, st.Misses)
	}
}

// TestMulTable: the byte-table product is multmodp's, for random operands
// and the single-bit ones that span each table.
func TestMulTable(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	ops := []uint32{0, 1, 0xffffffff}
	for k := range 32 {
		ops = append(ops, 1<<k)
	}
	for range 1000 {
		ops = append(ops, rng.Uint32())
	}
	for _, b := range ops {
		if got, want := shiftFullTable.mul(b), multmodp(shiftFull, b); got != want {
			t.Fatalf("mul(%#x) = %#x, multmodp gives %#x", b, got, want)
		}
	}
}

// BenchmarkCombineSums is the combine of one full chunk's sub-block sums
// into its frame checksum, as every sealed and fetched chunk needs.
func BenchmarkCombineSums(b *testing.B) {
	data := make([]byte, ChunkSize)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var s Sums
	SubBlockSums(data, &s)
	for b.Loop() {
		CombineSums(&s, ChunkSize)
	}
}
