package cache

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"strings"
	"testing"
)

func sampleEntries() []indexEntry {
	var es []indexEntry
	for i, n := range []int{1, SubBlockSize, SubBlockSize + 1, ChunkSize} {
		e := indexEntry{slot: uint32(3 * i), key: key("vol"+string(rune('a'+i)), uint64(i)<<40, uint32(i)), length: uint32(n)}
		for j := range subBlocksFor(n) {
			e.crcs[j] = uint32(i*100 + j + 1)
		}
		es = append(es, e)
	}
	es = append(es, indexEntry{slot: 1, key: Key{}, length: 7, crcs: [subBlocks]uint32{9}})
	return es
}

func TestIndexRoundTrip(t *testing.T) {
	h := indexHeader{chunkSize: ChunkSize, slots: 12}
	for _, es := range [][]indexEntry{nil, sampleEntries()} {
		b := encodeIndex(h, es)
		gh, ges, err := decodeIndex(b)
		if err != nil {
			t.Fatal(err)
		}
		if gh != h || len(ges) != len(es) || (len(es) > 0 && !reflect.DeepEqual(ges, es)) {
			t.Fatalf("round trip: got %+v %+v; want %+v %+v", gh, ges, h, es)
		}
	}
}

func TestIndexRejectsEveryFlipAndTruncation(t *testing.T) {
	b := encodeIndex(indexHeader{chunkSize: ChunkSize, slots: 12}, sampleEntries())
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x01
		if _, _, err := decodeIndex(c); !errors.Is(err, errCorruptIndex) {
			t.Fatalf("flip at byte %d: err %v; want errCorruptIndex", i, err)
		}
	}
	for n := range len(b) {
		if _, _, err := decodeIndex(b[:n]); !errors.Is(err, errCorruptIndex) {
			t.Fatalf("truncated to %d: err %v; want errCorruptIndex", n, err)
		}
	}
}

func TestIndexRejectsInconsistentEntries(t *testing.T) {
	h := indexHeader{chunkSize: ChunkSize, slots: 12}
	for name, mutate := range map[string]func([]indexEntry) []indexEntry{
		"slot out of range": func(es []indexEntry) []indexEntry { es[0].slot = 12; return es },
		"duplicate slot":    func(es []indexEntry) []indexEntry { es[1].slot = es[0].slot; return es },
		"duplicate key":     func(es []indexEntry) []indexEntry { es[1].key = es[0].key; return es },
		"zero length":       func(es []indexEntry) []indexEntry { es[0].length = 0; return es },
		"more than slots": func(es []indexEntry) []indexEntry {
			for i := range 13 {
				es = append(es, indexEntry{slot: uint32(i), key: key("x", uint64(i), 0), length: 1})
			}
			return es
		},
	} {
		b := encodeIndex(h, mutate(sampleEntries()))
		if _, _, err := decodeIndex(b); !errors.Is(err, errCorruptIndex) {
			t.Errorf("%s: err %v; want errCorruptIndex", name, err)
		}
	}
}

func TestIndexRejectsOverlongChunk(t *testing.T) {
	b := encodeIndex(indexHeader{chunkSize: ChunkSize, slots: 12}, sampleEntries())
	binary.LittleEndian.PutUint32(b[indexHeaderSize+4:], ChunkSize+1) // entry 0's length
	body := b[:len(b)-indexTrailer]
	binary.LittleEndian.PutUint32(b[len(body):], crc32.Checksum(body, castagnoli()))
	if _, _, err := decodeIndex(b); !errors.Is(err, errCorruptIndex) || !strings.Contains(err.Error(), "length") {
		t.Errorf("err %v; want errCorruptIndex about the length", err)
	}
}

func FuzzDecodeIndex(f *testing.F) {
	f.Add(encodeIndex(indexHeader{chunkSize: ChunkSize, slots: 12}, sampleEntries()))
	f.Add(encodeIndex(indexHeader{chunkSize: ChunkSize, slots: 1}, nil))
	f.Add([]byte(indexMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, es, err := decodeIndex(b)
		if err != nil {
			if !errors.Is(err, errCorruptIndex) {
				t.Fatalf("error %v does not wrap errCorruptIndex", err)
			}
			return
		}
		// Whatever decodes re-encodes to the same bytes.
		if got := encodeIndex(h, es); string(got) != string(b) {
			t.Fatalf("re-encoding differs")
		}
	})
}
