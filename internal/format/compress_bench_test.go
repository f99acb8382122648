package format

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// benchCorpus is 16 MiB of real files, whole 64 KiB chunks: the go
// binary (machine code) and the Go sources of net/http (text), half each.
func benchCorpus(b *testing.B) []byte {
	b.Helper()
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Fatalf("go env GOROOT: %v", err)
	}
	root := strings.TrimSpace(string(out))
	bin, err := os.ReadFile(filepath.Join(root, "bin", "go"))
	if err != nil {
		b.Fatal(err)
	}
	srcs, _ := filepath.Glob(filepath.Join(root, "src", "net", "http", "*.go"))
	var text []byte
	for _, f := range srcs {
		x, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		text = append(text, x...)
	}
	const half = 8 << 20
	if len(bin) < half || len(text) < ChunkSize {
		b.Fatalf("corpus too small: go binary %d bytes, net/http sources %d", len(bin), len(text))
	}
	d := append([]byte(nil), bin[:half]...)
	for len(d) < 2*half {
		d = append(d, text[:min(len(text), 2*half-len(d))]...)
	}
	return d
}

// BenchmarkFrameCompression compresses and decompresses 64 KiB chunks of
// real data with LZ4's reference fast algorithm (lz4-ccompat, what packed
// frames use), pierrec/lz4's own (lz4), and zstd at its fastest level;
// ratio is compressed/original, with frames that save under an eighth
// counted raw as Pack stores them. random is the same for incompressible
// data (the cost of trying).
//
//	go test -run '^$' -bench FrameCompression ./internal/format/
func BenchmarkFrameCompression(b *testing.B) {
	real := benchCorpus(b)
	random := make([]byte, len(real))
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	type codec struct {
		name string
		comp func(src, dst []byte) []byte
		dec  func(src, dst []byte) error
	}
	var lc lz4.Compressor
	var cc lz4.CompressorCCompat
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		b.Fatal(err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		b.Fatal(err)
	}
	lz4dec := func(src, dst []byte) error { _, err := lz4.UncompressBlock(src, dst[:ChunkSize]); return err }
	for _, c := range []codec{
		{"lz4-ccompat", func(src, dst []byte) []byte {
			n, _ := cc.CompressBlock(src, dst[:cap(dst)])
			return dst[:n]
		}, lz4dec},
		{"lz4", func(src, dst []byte) []byte {
			n, _ := lc.CompressBlock(src, dst[:cap(dst)])
			return dst[:n]
		}, lz4dec},
		{"zstd-fastest", func(src, dst []byte) []byte { return enc.EncodeAll(src, dst[:0]) },
			func(src, dst []byte) error { _, err := dec.DecodeAll(src, dst[:0]); return err }},
	} {
		for _, data := range []struct {
			name string
			d    []byte
		}{{"real", real}, {"random", random}} {
			d := data.d
			b.Run(c.name+"/"+data.name, func(b *testing.B) {
				buf := make([]byte, 0, 2*ChunkSize)
				out := make([]byte, 0, ChunkSize)
				b.SetBytes(int64(len(d)))
				var stored int
				for b.Loop() {
					stored = 0
					for i := 0; i < len(d); i += ChunkSize {
						z := c.comp(d[i:i+ChunkSize], buf)
						if len(z) == 0 || len(z) > ChunkSize-ChunkSize/8 {
							stored += ChunkSize
							continue
						}
						stored += len(z)
						if err := c.dec(z, out); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(stored)/float64(len(d)), "ratio")
			})
		}
	}
}
