package volume

import (
	"math/rand/v2"
	"testing"

	"github.com/urldisk/urldisk/internal/format"
)

// BenchmarkSealSummed is the CPU a writer spends per 4 MiB record inside
// sealLocked (under the volume lock) in each at-rest mode: plain frames,
// sealed, packed and packed+sealed, on data like fio's half-compressible
// buffers (compressibleData) and on random data.
func BenchmarkSealSummed(b *testing.B) {
	kek := kekOf(b, 1)
	desc, err := format.NewEncryption(kek)
	if err != nil {
		b.Fatal(err)
	}
	key, err := desc.Unwrap(kek)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	random := make([]byte, 4<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for _, data := range []struct {
		name string
		b    []byte
	}{{"half", compressibleData(rng, 4<<20)}, {"random", random}} {
		bld := format.NewBuilder(len(data.b))
		bld.Append(data.b)
		for _, m := range []struct {
			name   string
			key    *format.DataKey
			packer *format.Packer
		}{{"none", nil, nil}, {"enc", key, nil}, {"lz4", nil, new(format.Packer)}, {"both", key, new(format.Packer)}} {
			b.Run(data.name+"/"+m.name, func(b *testing.B) {
				nonces := format.NewNonces(format.WriterID{1})
				b.SetBytes(int64(len(data.b)))
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					rec := &format.Record{Type: format.RecordData, Seq: uint64(i + 2), Epoch: 1, Time: 1, Volume: "v", Durable: 1,
						Extents: []format.Extent{{Off: 0, Len: uint64(len(data.b))}}}
					if _, err := sealSummed(&segment{b: bld}, rec, bld, m.key, nonces, m.packer); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
