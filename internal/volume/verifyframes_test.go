package volume

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/urldisk/urldisk/internal/format"
)

// TestFrameVerifierAsBodyArrives: checking frames as a GET body arrives
// (frameVerifier.check on growing prefixes, split anywhere, then the final
// check) ends exactly as verifyFrames on the whole body: the same frames,
// sums and error, for records of any length, windows past the record's
// end (the trailer), truncated bodies and bodies with a corrupt frame
// header or payload anywhere.
func TestFrameVerifierAsBodyArrives(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	for round := range 300 {
		n := 1 + rng.IntN(6*format.ChunkSize)
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		b := format.NewBuilder(n)
		b.Append(data)
		obj, err := b.Seal(&format.Record{Type: format.RecordData, Seq: 3, Epoch: 1, Time: 1, Volume: "v",
			Durable: 2, Extents: []format.Extent{{Off: 0, Len: uint64(n)}}})
		if err != nil {
			t.Fatal(err)
		}
		body := slices.Clone(obj)
		chunks := (n + format.ChunkSize - 1) / format.ChunkSize
		count := chunks + rng.IntN(2) // a window over the whole record asks for one more
		switch rng.IntN(4) {
		case 0: // a payload byte
			body[rng.IntN(len(body))] ^= 1 << rng.IntN(8)
		case 1: // a frame's length
			body[format.FramePos(uint64(rng.IntN(chunks)))] ^= 0x40
		case 2: // cut short
			body = body[:rng.IntN(len(body))+1]
		}
		body = body[:min(len(body), count*format.FrameSize)]

		want := &fetchCall{count: count}
		wantErr := verifyFrames(want, body)

		got := &fetchCall{count: count}
		fv := frameVerifier{c: got}
		for at := 0; at < len(body); {
			at = min(len(body), at+1+rng.IntN(3*format.FrameSize/2))
			if err := fv.check(body[:at], false); err != nil {
				t.Fatalf("round %d: check of %d bytes before the end: %v", round, at, err)
			}
		}
		gotErr := fv.check(body, true)
		if (gotErr == nil) != (wantErr == nil) || (wantErr != nil && gotErr.Error() != wantErr.Error()) {
			t.Fatalf("round %d: error %v, verifyFrames says %v", round, gotErr, wantErr)
		}
		if wantErr != nil && !errors.Is(gotErr, format.ErrCorrupt) {
			t.Fatalf("round %d: error %v does not wrap ErrCorrupt", round, gotErr)
		}
		if len(got.frames) != len(want.frames) || !slices.Equal(got.sums, want.sums) {
			t.Fatalf("round %d: %d frames, %d sums; verifyFrames: %d frames, %d sums (or other sums)",
				round, len(got.frames), len(got.sums), len(want.frames), len(want.sums))
		}
		for i := range want.frames {
			if !slices.Equal(got.frames[i], want.frames[i]) {
				t.Fatalf("round %d: frame %d differs", round, i)
			}
		}
	}
}
