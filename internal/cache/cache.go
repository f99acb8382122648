package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urldisk/urldisk/internal/periodic"
)

const (
	// ChunkSize is the largest chunk the cache stores and the size of a slot.
	ChunkSize = 64 << 10
	// SubBlockSize is the checksum granularity: every SubBlockSize-aligned
	// piece of a chunk has its own CRC-32C, so a small read verifies only the
	// sub-blocks it touches.
	SubBlockSize = 4 << 10
	// MinSlots is the smallest cache Open accepts, in chunks.
	MinSlots = 4
	// MaxVolLen is the longest Key.Vol that Put accepts, in bytes.
	MaxVolLen = 1<<16 - 1
	// DefaultIndexSyncInterval is used when Options.IndexSyncInterval is zero.
	DefaultIndexSyncInterval = 30 * time.Second
	// WriteWarnInterval is the least time between two WARNs about failed
	// cache writes. A full cache disk fails every fill; one line a minute
	// (with a count of the failures it stands for) says so without flooding.
	WriteWarnInterval = time.Minute

	subBlocks = ChunkSize / SubBlockSize
	maxSlots  = 1<<31 - 1

	lockFileName  = "lock"
	slabFileName  = "slab"
	indexFileName = "index"
)

var (
	// ErrLocked is returned by Open when another Cache (in this or another
	// process) holds the directory. Callers may run without a cache.
	// The holder is usually the same user's other serve or agent, so the
	// message names a process, not a user.
	ErrLocked = errors.New("cache directory is in use by another process")
	// ErrClosed is returned by methods called after Close.
	ErrClosed = errors.New("cache closed")
	// ErrUnusable is wrapped by Open's errors about the directory itself:
	// it cannot be created, locked or hold the slab (a read-only or full
	// filesystem, a file where the directory should be, no permission).
	// The cache is only an optimisation, so callers run without one (every
	// read from the object store) and say so, rather than refusing to serve.
	ErrUnusable = errors.New("cache directory unusable")
)

// Key names one immutable chunk: chunk Chunk of record Seq of volume Vol.
// The bytes behind a Key must never change (see the package doc).
type Key struct {
	Vol   string
	Seq   uint64
	Chunk uint32
}

// String formats k as vol/seq/chunk for logs and errors.
func (k Key) String() string { return fmt.Sprintf("%s/%d/%d", k.Vol, k.Seq, k.Chunk) }

// Options tunes a Cache. The zero value is ready to use.
type Options struct {
	// IndexSyncInterval is how often the index is persisted in the
	// background. Zero means DefaultIndexSyncInterval (30s); negative
	// disables periodic persistence (the index is still written by Sync and
	// Close).
	IndexSyncInterval time.Duration
	// Logger receives notices about discarded indexes, corrupt chunks and
	// failed background syncs. Nil means slog.Default().
	Logger *slog.Logger
}

// Stats is a snapshot of a Cache's counters.
type Stats struct {
	Hits      uint64 // ReadAt calls that returned data
	Misses    uint64 // ReadAt calls that did not (unknown key, short chunk, corrupt, raced with eviction)
	Corrupt   uint64 // chunks dropped because a checksum (or the slab's length) did not match
	Evictions uint64 // chunks evicted by CLOCK to make room
	// WriteErrors counts failed writes to the cache directory (a slab write
	// by Put, or persisting the index), e.g. ENOSPC: the data was not cached.
	WriteErrors uint64
	Entries     int   // chunks stored or being stored by a Put
	Bytes       int64 // sum of the stored chunks' lengths
	Capacity    int64 // slab size: slots × ChunkSize
}

// slotState is the life cycle of a slot: free → writing → ready → free.
type slotState uint8

const (
	slotFree    slotState = iota // holds nothing; not in the index
	slotWriting                  // claimed by a Put whose pwrite is in flight; in the index, never read
	slotReady                    // holds key's bytes; readable
)

// slot is the in-memory metadata of one ChunkSize region of the slab.
type slot struct {
	// Guarded by Cache.mu (written under mu, read under mu or mu.RLock).
	key    Key
	length int32             // bytes stored, 1..ChunkSize when not free
	state  slotState         // Invariant: state != slotFree ⇔ Cache.index[key] == this slot
	crcs   [subBlocks]uint32 // CRC-32C of each sub-block of the stored bytes; valid when ready

	// gen is bumped (under mu held exclusively) whenever the slot is claimed
	// or dropped. A reader that loads the same gen before and after its
	// pread knows no writer touched the slot meanwhile: a claim always bumps
	// gen before it writes.
	gen atomic.Uint64
	// ref is CLOCK's reference bit: set by readers on a hit, cleared by the
	// hand as it passes.
	ref atomic.Bool
}

// Cache is a bounded, persistent, checksummed store of immutable chunks in
// one directory. All methods are safe for concurrent use.
type Cache struct {
	dir      string
	lockFile *dirLock
	slab     *os.File // ChunkSize × len(slots) bytes; slot i at offset i×ChunkSize
	table    *crc32.Table
	log      *slog.Logger
	capacity int64
	bufs     sync.Pool // *[ChunkSize]byte scratch for unaligned reads

	// mu guards the index, the slots' guarded fields, and the fields below.
	// Lock order: syncMu before mu. No I/O is done while holding mu.
	mu     sync.RWMutex
	index  map[Key]int32 // Invariant: index[k] == i ⇔ slots[i].key == k && slots[i].state != slotFree
	slots  []slot
	hand   int   // CLOCK hand: next slot to consider for eviction
	bytes  int64 // Invariant: sum of slots[i].length over ready slots
	closed bool

	// syncMu serialises index persistence and the closing of files.
	syncMu   sync.Mutex
	released bool // files closed and lock released; guarded by syncMu

	hits, misses, corrupt, evictions, writeErrors atomic.Uint64

	// reserved is how many bytes from the slab's start have disk blocks
	// allocated (reserveTo); reserveMu serialises its growth.
	reserveMu sync.Mutex
	reserved  atomic.Int64

	// lastWriteWarn is when the last "cache write failed" WARN was logged
	// (UnixNano; 0 = never); writeErrors at that moment is warnedErrors, so
	// the next WARN can say how many failures it stands for.
	lastWriteWarn atomic.Int64
	warnedErrors  atomic.Uint64

	cancel context.CancelFunc
	wg     sync.WaitGroup

	// afterPread, if set, runs in ReadAt between the pread and the checks
	// that follow it. Tests use it to reuse a slot under a reader; it is set
	// before the Cache is shared and never changed.
	afterPread func()
}

// Open opens the cache in dir, creating dir and its files as needed, with
// room for maxBytes/ChunkSize chunks (rounded down; at least MinSlots). It
// takes an exclusive lock on dir: if another Cache holds it, the error wraps
// ErrLocked; if the directory cannot be used (created, locked, or hold the
// slab), it wraps ErrUnusable. A persisted index is loaded if it is valid and matches the slab
// size; otherwise the cache starts empty.
func Open(dir string, maxBytes int64, opts Options) (*Cache, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("open cache %s: size %d bytes is not positive", dir, maxBytes)
	}
	nslots := maxBytes / ChunkSize
	if nslots < MinSlots {
		return nil, fmt.Errorf("open cache %s: size %d bytes holds %d chunks, need at least %d (%d bytes)",
			dir, maxBytes, nslots, MinSlots, MinSlots*ChunkSize)
	}
	if nslots > maxSlots {
		return nil, fmt.Errorf("open cache %s: size %d bytes exceeds %d chunks", dir, maxBytes, maxSlots)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open cache %s: %w: create dir: %w", dir, ErrUnusable, err)
	}
	lock, err := lockDir(dir)
	if errors.Is(err, ErrLocked) {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w: %w", dir, ErrUnusable, err)
	}
	capacity := nslots * ChunkSize
	slab, fresh, err := openSlab(dir, capacity)
	if err != nil {
		_ = lock.release()
		return nil, fmt.Errorf("open cache %s: %w: %w", dir, ErrUnusable, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Cache{
		dir:      dir,
		lockFile: lock,
		slab:     slab,
		table:    castagnoli(),
		log:      log.With("cache", dir),
		capacity: capacity,
		index:    make(map[Key]int32),
		slots:    make([]slot, nslots),
	}
	c.bufs.New = func() any { return new([ChunkSize]byte) }
	if fresh {
		// An index left from the old slab would only produce checksum
		// failures; remove it so a crash before the first Sync starts clean.
		if err := os.Remove(filepath.Join(dir, indexFileName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("remove old cache index", "err", err)
		}
		c.log.Info("cache slab created; starting empty", "bytes", capacity)
	} else {
		c.loadIndex()
	}

	interval := opts.IndexSyncInterval
	if interval == 0 {
		interval = DefaultIndexSyncInterval
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	if interval > 0 {
		c.wg.Add(1)
		go c.syncLoop(ctx, interval)
	}
	return c, nil
}

// loadIndex fills the in-memory index from the index file if it is valid and
// matches this slab; otherwise it logs why and leaves the cache empty. Called
// by Open before the Cache is shared.
func (c *Cache) loadIndex() {
	path := filepath.Join(c.dir, indexFileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		c.log.Info("cache index missing; starting empty")
		return
	}
	if err != nil {
		c.log.Warn("cache index unreadable; starting empty", "err", err)
		return
	}
	h, entries, err := decodeIndex(b)
	if err != nil {
		c.log.Warn("cache index invalid; starting empty", "err", err)
		return
	}
	if h.chunkSize != ChunkSize || int(h.slots) != len(c.slots) {
		c.log.Warn("cache index describes another slab; starting empty",
			"index_chunk_size", h.chunkSize, "index_slots", h.slots, "slots", len(c.slots))
		return
	}
	for i := range entries {
		e := &entries[i]
		s := &c.slots[e.slot]
		s.key = e.key
		s.length = int32(e.length)
		s.crcs = e.crcs
		s.state = slotReady
		c.index[e.key] = int32(e.slot)
		c.bytes += int64(e.length)
	}
	c.log.Info("cache index loaded", "entries", len(entries), "bytes", c.bytes)
}

// ReadAt copies into p the bytes at off of the chunk named by key. It returns
// hit == true only if the whole range [off, off+len(p)) is stored and every
// sub-block it touches matched its checksum.
//
// On a miss (unknown key, range past the stored length, checksum mismatch,
// slot reused during the read) it returns (false, nil) and the contents of p
// are unspecified: the caller fetches from the object store. A checksum
// mismatch also drops the entry and counts in Stats().Corrupt. A non-nil
// error (I/O failure, ErrClosed, negative off) also means a miss.
//
// A hit costs one pread and a CRC-32C per touched sub-block, and does not
// allocate.
func (c *Cache) ReadAt(key Key, p []byte, off int) (hit bool, err error) {
	if off < 0 {
		return false, fmt.Errorf("cache read %v: negative offset %d", key, off)
	}
	end := off + len(p)

	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return false, ErrClosed
	}
	si, ok := c.index[key]
	if !ok {
		c.mu.RUnlock()
		c.misses.Add(1)
		return false, nil
	}
	s := &c.slots[si]
	length := int(s.length)
	if s.state != slotReady || end > length {
		c.mu.RUnlock()
		c.misses.Add(1)
		return false, nil
	}
	if len(p) == 0 {
		c.mu.RUnlock()
		c.hits.Add(1)
		return true, nil
	}
	gen := s.gen.Load()
	first, last := off/SubBlockSize, (end-1)/SubBlockSize
	var want [subBlocks]uint32
	copy(want[first:last+1], s.crcs[first:last+1])
	if !s.ref.Load() {
		s.ref.Store(true)
	}
	c.mu.RUnlock()

	// Read the touched sub-blocks whole, straight into p when p covers
	// exactly them, else into a scratch buffer.
	lo := first * SubBlockSize
	hi := min((last+1)*SubBlockSize, length)
	var buf []byte
	var scratch *[ChunkSize]byte
	if lo == off && hi == end {
		buf = p
	} else {
		scratch = c.bufs.Get().(*[ChunkSize]byte)
		buf = scratch[:hi-lo]
	}
	_, rerr := c.slab.ReadAt(buf, int64(si)*ChunkSize+int64(lo))
	if c.afterPread != nil {
		c.afterPread()
	}
	good := rerr == nil
	if good {
		for i := first; i <= last; i++ {
			sb := buf[i*SubBlockSize-lo : min((i+1)*SubBlockSize, length)-lo]
			if crc32.Checksum(sb, c.table) != want[i] {
				good = false
				break
			}
		}
	}
	// The gen check must come after the pread and the checksums: it proves
	// the bytes just verified belong to key and not to a later occupant.
	reused := s.gen.Load() != gen
	if good && !reused {
		if scratch != nil {
			copy(p, buf[off-lo:])
			c.bufs.Put(scratch)
		}
		c.hits.Add(1)
		return true, nil
	}
	if scratch != nil {
		c.bufs.Put(scratch)
	} else {
		clear(p) // never leave unverified bytes where the caller looks
	}
	c.misses.Add(1)
	if reused {
		return false, nil
	}
	if rerr != nil && !errors.Is(rerr, io.EOF) {
		c.drop(si, gen, key, false)
		return false, fmt.Errorf("cache read %v: slot %d: %w", key, si, rerr)
	}
	// Checksum mismatch, or the slab is shorter than it should be.
	c.drop(si, gen, key, true)
	return false, nil
}

// Has reports whether the chunk named by key is stored, without reading it
// or counting a hit or a miss (for prefetchers deciding what to fetch).
func (c *Cache) Has(key Key) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	si, ok := c.index[key]
	return ok && !c.closed && c.slots[si].state == slotReady
}

// drop frees slot si if it still holds generation gen, counting it as corrupt
// if asked.
func (c *Cache) drop(si int32, gen uint64, key Key, corrupt bool) {
	c.mu.Lock()
	s := &c.slots[si]
	if s.gen.Load() != gen || s.state != slotReady {
		c.mu.Unlock()
		return
	}
	delete(c.index, s.key)
	c.bytes -= int64(s.length)
	s.state = slotFree
	s.gen.Add(1)
	c.mu.Unlock()
	if corrupt {
		c.corrupt.Add(1)
		c.log.Warn("cache chunk failed its checksum; dropped", "key", key, "slot", si)
	}
}

// Put stores a copy of data (1..ChunkSize bytes) as the chunk named by key,
// evicting a cold chunk if the cache is full. If key is already stored or
// being stored, Put does nothing. data is not retained. The chunk becomes
// readable when Put returns nil. In the rare case that every slot is being
// written by a concurrent Put, the chunk is silently not cached.
func (c *Cache) Put(key Key, data []byte) error { return c.put(key, data, nil) }

// PutSummed is Put for a caller that has already computed data's sub-block
// sums with SubBlockSums (typically while verifying data against a checksum
// of its own, see CombineSums), so the bytes are not read again here. Sums
// that do not match data make later reads miss, as a corrupt slab would.
func (c *Cache) PutSummed(key Key, data []byte, sums *Sums) error { return c.put(key, data, sums) }

func (c *Cache) put(key Key, data []byte, sums *Sums) error {
	if len(data) == 0 || len(data) > ChunkSize {
		return fmt.Errorf("cache put %v: length %d outside 1..%d", key, len(data), ChunkSize)
	}
	if len(key.Vol) > MaxVolLen {
		return fmt.Errorf("cache put: volume id of %d bytes exceeds %d", len(key.Vol), MaxVolLen)
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if _, ok := c.index[key]; ok {
		c.mu.Unlock()
		return nil
	}
	si, ok := c.claimLocked()
	if !ok {
		c.mu.Unlock()
		return nil
	}
	s := &c.slots[si]
	s.gen.Add(1)
	s.key = key
	s.length = int32(len(data))
	s.state = slotWriting
	s.ref.Store(false)
	c.index[key] = si
	c.mu.Unlock()

	var crcs [subBlocks]uint32
	if sums != nil {
		crcs = *sums
		clear(crcs[subBlocksFor(len(data)):]) // unused sub-blocks are zero, as in the index
	} else {
		for i := range subBlocksFor(len(data)) {
			crcs[i] = crc32.Checksum(data[i*SubBlockSize:min((i+1)*SubBlockSize, len(data))], c.table)
		}
	}
	c.reserveTo(int64(si+1) * ChunkSize)
	_, werr := c.slab.WriteAt(data, int64(si)*ChunkSize)

	c.mu.Lock()
	if werr != nil {
		delete(c.index, key)
		s.state = slotFree
		s.gen.Add(1)
		c.mu.Unlock()
		werr = fmt.Errorf("cache put %v: write slot %d: %w", key, si, werr)
		c.noteWriteError(werr)
		return werr
	}
	s.crcs = crcs
	s.state = slotReady
	c.bytes += int64(len(data))
	c.mu.Unlock()
	return nil
}

// noteWriteError counts a failed write to the cache directory and logs it as
// a WARN, at most once per WriteWarnInterval. Callers treat such failures as
// "not cached" (the bytes came from, or are in, the object store), so
// without this a full or failing cache disk would only show up as a cold
// cache.
func (c *Cache) noteWriteError(err error) {
	n := c.writeErrors.Add(1)
	now := time.Now().UnixNano()
	last := c.lastWriteWarn.Load()
	if last != 0 && now-last < int64(WriteWarnInterval) {
		return
	}
	if !c.lastWriteWarn.CompareAndSwap(last, now) {
		return // another goroutine is logging this interval's WARN
	}
	since := n - c.warnedErrors.Swap(n)
	c.log.Warn("cache write failed; serving from the object store without caching",
		"dir", c.dir, "err", err, "failures_since_last_warning", since)
}

// claimLocked runs the CLOCK hand to find a slot for a new chunk: a free slot,
// or a ready one whose reference bit is clear (evicting it). Slots being
// written are skipped. It returns false if two sweeps found nothing, which
// happens only if every slot is being written. Caller holds mu exclusively.
func (c *Cache) claimLocked() (int32, bool) {
	n := len(c.slots)
	for range 2*n + 1 {
		si := c.hand
		c.hand++
		if c.hand == n {
			c.hand = 0
		}
		s := &c.slots[si]
		switch s.state {
		case slotFree:
			return int32(si), true
		case slotWriting:
			continue
		case slotReady:
			if s.ref.Load() {
				s.ref.Store(false)
				continue
			}
			delete(c.index, s.key)
			c.bytes -= int64(s.length)
			s.state = slotFree
			c.evictions.Add(1)
			return int32(si), true
		}
	}
	return 0, false
}

// reserveStep is how far ahead of the slot being filled reserveTo
// allocates the slab's blocks.
const reserveStep = 64 << 20

// reserveTo makes sure the slab's blocks up to end are allocated, reserving
// up to reserveStep more. The slab is sparse (a generous --cache-size costs
// no disk up front), but a write into a hole makes ext4 reserve and map
// blocks page by page (delayed allocation), and concurrent fills contend on
// it: 0.6 CPU-ms per MiB filled against 0.3-0.45 into allocated blocks,
// about a tenth of serve's CPU on a cold sequential read. The CLOCK hand
// claims slots in order, so the reservation runs just ahead of what is
// cached: the disk used grows as before, at most reserveStep early. A
// filesystem that cannot (or a disk too full to) allocate ends the
// reservations; writes then go into holes as before, and fail as before
// when the disk is full.
func (c *Cache) reserveTo(end int64) {
	if c.reserved.Load() >= end {
		return
	}
	c.reserveMu.Lock()
	defer c.reserveMu.Unlock()
	r := c.reserved.Load()
	if r >= end {
		return
	}
	n := min(max(end-r, reserveStep), c.capacity-r)
	if err := allocate(c.slab, r, n); err != nil {
		c.reserved.Store(c.capacity)
		c.log.Debug("cache slab: no block preallocation; filling holes", "err", err)
		return
	}
	c.reserved.Store(r + n)
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.RLock()
	st := Stats{Entries: len(c.index), Bytes: c.bytes, Capacity: c.capacity}
	c.mu.RUnlock()
	st.Hits = c.hits.Load()
	st.Misses = c.misses.Load()
	st.Corrupt = c.corrupt.Load()
	st.Evictions = c.evictions.Load()
	st.WriteErrors = c.writeErrors.Load()
	return st
}

// Sync persists the index now: it fsyncs the slab so every indexed chunk is
// durable, then atomically replaces the index file. Close and the background
// loop call it; callers need not.
func (c *Cache) Sync() error {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	if c.released {
		return ErrClosed
	}
	return c.persistLocked()
}

// persistLocked snapshots the ready slots, fsyncs the slab, and writes the
// index. The snapshot is taken first, so every chunk it lists was fully
// written before the fsync. A failure is also noted (counted and WARNed,
// rate-limited), since Close's callers usually have nothing to do with its
// error. Caller holds syncMu.
func (c *Cache) persistLocked() error {
	err := c.persistIndex()
	if err != nil {
		c.noteWriteError(err)
	}
	return err
}

func (c *Cache) persistIndex() error {
	c.mu.RLock()
	entries := make([]indexEntry, 0, len(c.index))
	for i := range c.slots {
		s := &c.slots[i]
		if s.state != slotReady {
			continue
		}
		entries = append(entries, indexEntry{slot: uint32(i), key: s.key, length: uint32(s.length), crcs: s.crcs})
	}
	c.mu.RUnlock()

	if err := c.slab.Sync(); err != nil {
		return fmt.Errorf("persist cache index: fsync slab: %w", err)
	}
	b := encodeIndex(indexHeader{chunkSize: ChunkSize, slots: uint32(len(c.slots))}, entries)
	if err := writeFileAtomic(filepath.Join(c.dir, indexFileName), b); err != nil {
		return fmt.Errorf("persist cache index: %w", err)
	}
	return nil
}

// syncLoop persists the index every interval until ctx is cancelled. Owned by
// the Cache: started by Open, stopped and waited for by Close.
func (c *Cache) syncLoop(ctx context.Context, interval time.Duration) {
	defer c.wg.Done()
	periodic.Run(ctx, interval, nil, func() {
		// A failure was already noted (and WARNed, rate-limited) by
		// persistLocked; the next tick retries.
		_ = c.Sync()
	})
}

// Close stops the background sync, persists the index, closes the slab and
// releases the directory lock. It returns the first error; the lock is
// released regardless. Calls after the first return ErrClosed. Close of a
// nil *Cache does nothing, so a caller running without a cache (Open failed
// with ErrUnusable) can close unconditionally.
func (c *Cache) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.closed = true
	c.mu.Unlock()

	c.cancel()
	c.wg.Wait()

	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	err := c.persistLocked()
	if cerr := c.slab.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close cache slab: %w", cerr)
	}
	if lerr := c.lockFile.release(); lerr != nil && err == nil {
		err = lerr
	}
	c.released = true
	if err != nil {
		return fmt.Errorf("close cache %s: %w", c.dir, err)
	}
	return nil
}
