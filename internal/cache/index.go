package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// Index file layout (little-endian), version 1:
//
//	header   magic [8]byte "URLDCIDX"
//	         version   uint32 (indexVersion)
//	         chunkSize uint32 (ChunkSize)
//	         slots     uint32 (slot count of the slab the index describes)
//	         count     uint32 (number of entries)
//	entries  count × {
//	             slot   uint32
//	             length uint32 (1..ChunkSize)
//	             seq    uint64
//	             chunk  uint32
//	             volLen uint16
//	             vol    [volLen]byte
//	             crcs   [ceil(length/SubBlockSize)]uint32
//	         }
//	trailer  crc32c uint32 of every preceding byte
//
// Slots and keys are unique within one file. The file is written whole to a
// temporary name, fsynced, renamed over the old one, and the directory fsynced.

const (
	indexMagic      = "URLDCIDX"
	indexVersion    = 1
	indexHeaderSize = 8 + 4*4
	indexEntryFixed = 4 + 4 + 8 + 4 + 2
	indexTrailer    = 4
)

// errCorruptIndex marks an index file that failed to decode.
var errCorruptIndex = errors.New("corrupt cache index")

// indexHeader is the geometry an index file was written for.
type indexHeader struct {
	chunkSize uint32
	slots     uint32
}

// indexEntry is one occupied slot as persisted.
type indexEntry struct {
	slot   uint32
	key    Key
	length uint32
	crcs   [subBlocks]uint32 // only the first subBlocksFor(length) are meaningful
}

// subBlocksFor returns how many sub-blocks a chunk of length bytes spans.
func subBlocksFor(length int) int {
	return (length + SubBlockSize - 1) / SubBlockSize
}

// castagnoli returns the CRC-32C table. crc32 builds it once and caches it.
func castagnoli() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) }

// encodeIndex serialises the header and entries. It is pure.
func encodeIndex(h indexHeader, entries []indexEntry) []byte {
	size := indexHeaderSize + indexTrailer
	for i := range entries {
		size += indexEntryFixed + len(entries[i].key.Vol) + 4*subBlocksFor(int(entries[i].length))
	}
	b := make([]byte, 0, size)
	b = append(b, indexMagic...)
	b = binary.LittleEndian.AppendUint32(b, indexVersion)
	b = binary.LittleEndian.AppendUint32(b, h.chunkSize)
	b = binary.LittleEndian.AppendUint32(b, h.slots)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	for i := range entries {
		e := &entries[i]
		b = binary.LittleEndian.AppendUint32(b, e.slot)
		b = binary.LittleEndian.AppendUint32(b, e.length)
		b = binary.LittleEndian.AppendUint64(b, e.key.Seq)
		b = binary.LittleEndian.AppendUint32(b, e.key.Chunk)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(e.key.Vol)))
		b = append(b, e.key.Vol...)
		for j := range subBlocksFor(int(e.length)) {
			b = binary.LittleEndian.AppendUint32(b, e.crcs[j])
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli()))
}

// decodeIndex parses an index file. It is pure and rejects anything malformed
// (bad magic, version, checksum, lengths, out-of-range or duplicate slots,
// duplicate keys) with an error wrapping errCorruptIndex; it never panics.
// The caller checks the header against its own geometry.
func decodeIndex(b []byte) (indexHeader, []indexEntry, error) {
	var h indexHeader
	if len(b) < indexHeaderSize+indexTrailer {
		return h, nil, fmt.Errorf("%w: %d bytes is too short", errCorruptIndex, len(b))
	}
	body, trailer := b[:len(b)-indexTrailer], b[len(b)-indexTrailer:]
	if got, want := crc32.Checksum(body, castagnoli()), binary.LittleEndian.Uint32(trailer); got != want {
		return h, nil, fmt.Errorf("%w: checksum %08x, want %08x", errCorruptIndex, got, want)
	}
	if string(body[:8]) != indexMagic {
		return h, nil, fmt.Errorf("%w: bad magic %q", errCorruptIndex, body[:8])
	}
	if v := binary.LittleEndian.Uint32(body[8:]); v != indexVersion {
		return h, nil, fmt.Errorf("%w: unsupported version %d", errCorruptIndex, v)
	}
	h.chunkSize = binary.LittleEndian.Uint32(body[12:])
	h.slots = binary.LittleEndian.Uint32(body[16:])
	count := binary.LittleEndian.Uint32(body[20:])
	if count > h.slots {
		return h, nil, fmt.Errorf("%w: %d entries for %d slots", errCorruptIndex, count, h.slots)
	}
	if h.chunkSize == 0 || h.chunkSize > ChunkSize {
		return h, nil, fmt.Errorf("%w: chunk size %d", errCorruptIndex, h.chunkSize)
	}
	rest := body[indexHeaderSize:]
	// Each entry needs at least indexEntryFixed+4 bytes; bound the allocation
	// by what the file can actually hold.
	if uint64(count)*(indexEntryFixed+4) > uint64(len(rest)) {
		return h, nil, fmt.Errorf("%w: %d entries do not fit in %d bytes", errCorruptIndex, count, len(rest))
	}
	entries := make([]indexEntry, count)
	usedSlots := make(map[uint32]struct{}, count)
	usedKeys := make(map[Key]struct{}, count)
	for i := range entries {
		e := &entries[i]
		if len(rest) < indexEntryFixed {
			return h, nil, fmt.Errorf("%w: entry %d truncated", errCorruptIndex, i)
		}
		e.slot = binary.LittleEndian.Uint32(rest)
		e.length = binary.LittleEndian.Uint32(rest[4:])
		e.key.Seq = binary.LittleEndian.Uint64(rest[8:])
		e.key.Chunk = binary.LittleEndian.Uint32(rest[16:])
		volLen := int(binary.LittleEndian.Uint16(rest[20:]))
		rest = rest[indexEntryFixed:]
		if e.slot >= h.slots {
			return h, nil, fmt.Errorf("%w: entry %d: slot %d out of range", errCorruptIndex, i, e.slot)
		}
		if e.length == 0 || e.length > h.chunkSize {
			return h, nil, fmt.Errorf("%w: entry %d: length %d", errCorruptIndex, i, e.length)
		}
		n := subBlocksFor(int(e.length))
		if len(rest) < volLen+4*n {
			return h, nil, fmt.Errorf("%w: entry %d truncated", errCorruptIndex, i)
		}
		e.key.Vol = string(rest[:volLen])
		rest = rest[volLen:]
		for j := range n {
			e.crcs[j] = binary.LittleEndian.Uint32(rest[4*j:])
		}
		rest = rest[4*n:]
		if _, dup := usedSlots[e.slot]; dup {
			return h, nil, fmt.Errorf("%w: entry %d: duplicate slot %d", errCorruptIndex, i, e.slot)
		}
		usedSlots[e.slot] = struct{}{}
		if _, dup := usedKeys[e.key]; dup {
			return h, nil, fmt.Errorf("%w: entry %d: duplicate key %v", errCorruptIndex, i, e.key)
		}
		usedKeys[e.key] = struct{}{}
	}
	if len(rest) != 0 {
		return h, nil, fmt.Errorf("%w: %d trailing bytes", errCorruptIndex, len(rest))
	}
	return h, entries, nil
}

// writeFileAtomic replaces path with data: write to path+".tmp", fsync,
// rename over path, fsync the directory. On failure the temporary file is
// removed (a full disk must not be left holding a truncated index.tmp) and
// path keeps its old contents.
func writeFileAtomic(path string, data []byte) (err error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	defer func() {
		if err != nil {
			// Best effort: the error that made us give up is the one to
			// report, and a leftover tmp is overwritten by the next sync.
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := syncClose(f, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return syncDir(filepath.Dir(path))
}

// syncDir fsyncs a directory so a rename or create in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	return syncClose(d, "dir "+dir)
}

// syncClose fsyncs and closes f, named name in errors. f is closed either
// way: a failed fsync leaves nothing worth keeping it open for.
func syncClose(f *os.File, name string) error {
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	return nil
}
