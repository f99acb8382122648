package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
)

// PrefetchStats says what a Prefetch did.
type PrefetchStats struct {
	GETs   int   // ranged GETs issued (or joined, when a read was already fetching them)
	Chunks int   // record chunks fetched into the cache
	Bytes  int64 // their data bytes
	Cached int   // chunks skipped because the cache held them already
}

// ErrNoCache means an operation needs a host cache and the volume has none.
var ErrNoCache = errors.New("volume has no cache")

// DefaultPrefetchParallel is Prefetch's GETs in flight when the caller
// passes 0: enough to keep a 100 MB/s, 20 ms store busy with the 64 KiB to
// 1 MiB GETs an access trace makes, few enough not to starve the machine's
// own reads of bandwidth.
const DefaultPrefetchParallel = 12

// maxPrefetchGet bounds one prefetch GET (chunks): 1 MiB, a pooled
// smallFetch buffer, so one GET neither takes long nor holds much memory.
const maxPrefetchGet = 16

// Prefetch fetches into the cache the record chunks that hold ranges,
// skipping what the cache has and what is still in memory, with at most
// parallel ranged GETs in flight (0 means DefaultPrefetchParallel). GETs are
// started in the order of ranges, so the caller states the order the bytes
// will be needed in (an access trace's first-touch order); adjacent chunks
// of one record become one GET.
//
// Prefetch has its own lane: its bound applies to its own GETs only, so a
// demand read (ReadAt) never waits for a prefetch slot. A demand read that
// misses a chunk a prefetch GET is fetching joins that GET (it is the
// earliest the bytes can arrive); any other miss starts its own GET at
// once. The bytes Prefetch caches are the same verified frames a read
// would cache, under the same keys: it never changes what a read returns.
//
// GETs in flight finish under the volume's own lifetime, not ctx's, so a
// demand read that joined one is never failed by the prefetch being
// cancelled; cancelling ctx stops new GETs and returns at once, without
// waiting for those in flight. It returns ctx's error if cancelled,
// ErrNoCache without a cache, or the first fetch error (fetches are best
// effort: the rest go on).
func (v *Volume) Prefetch(ctx context.Context, ranges []Range, parallel int) (PrefetchStats, error) {
	var st PrefetchStats
	if v.cache == nil {
		return st, fmt.Errorf("prefetch %s: %w", v.desc.Name, ErrNoCache)
	}
	if parallel <= 0 {
		parallel = DefaultPrefetchParallel
	}
	has, _ := v.cache.(interface{ Has(cache.Key) bool })
	lane := make(chan struct{}, parallel)
	var (
		wg       sync.WaitGroup
		chunks   atomic.Int64
		bytes    atomic.Int64
		errOnce  sync.Once
		firstErr error
	)
	fetch := func(g prefetchGET) {
		defer func() { <-lane; wg.Done() }()
		// fetchChunk may hand back a GET already in flight that covers
		// only the start of ours (a demand read's): go on after it.
		for end := uint64(g.key.Chunk) + uint64(g.count); uint64(g.key.Chunk) < end; {
			c, err := v.fetchChunk(v.ctx, g.key, g.key.Chunk, int(end-uint64(g.key.Chunk)), nil, fetchFill)
			if err != nil {
				errOnce.Do(func() { firstErr = err })
				return
			}
			got := uint64(c.first) + uint64(len(c.frames)) // first chunk after what c holds
			short := len(c.frames) < c.count
			for _, f := range c.frames[g.key.Chunk-c.first:] {
				chunks.Add(1)
				bytes.Add(int64(len(f)))
			}
			c.release() // may recycle c.frames: not used after this
			if short {
				return // the record's data ended (or a bad frame: a read reports it)
			}
			g.key.Chunk = uint32(got)
		}
	}
	seen := map[cache.Key]bool{}
	var pending *prefetchGET // the GET being grown from adjacent chunks
	start := func() bool {
		if pending == nil {
			return true
		}
		g := *pending
		pending = nil
		select {
		case lane <- struct{}{}:
		case <-ctx.Done():
			return false
		case <-v.ctx.Done():
			return false
		}
		st.GETs++
		wg.Add(1)
		go fetch(g)
		return true
	}
	for _, r := range ranges {
		chunkKeys, err := v.prefetchChunks(r)
		if err != nil {
			errOnce.Do(func() { firstErr = err })
			break
		}
		stopped := false
		for _, k := range chunkKeys {
			if seen[k] {
				continue // another range's chunk too
			}
			seen[k] = true
			if has != nil && has.Has(k) {
				st.Cached++
				continue
			}
			if p := pending; p != nil && p.key.Vol == k.Vol && p.key.Seq == k.Seq &&
				uint64(p.key.Chunk)+uint64(p.count) == uint64(k.Chunk) && p.count < maxPrefetchGet {
				p.count++
				continue
			}
			if !start() {
				stopped = true
				break
			}
			pending = &prefetchGET{key: k, count: 1}
		}
		if stopped {
			break
		}
	}
	start()
	// Cancelled, return at once (a machine stopping must not wait for a
	// slow store): the GETs in flight, at most parallel, end on their own.
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-ctx.Done():
	}
	st.Chunks, st.Bytes = int(chunks.Load()), bytes.Load()
	if err := ctx.Err(); err != nil {
		return st, fmt.Errorf("prefetch %s: %w", v.desc.Name, err)
	}
	if firstErr != nil {
		return st, fmt.Errorf("prefetch %s: %w", v.desc.Name, firstErr)
	}
	return st, nil
}

// prefetchGET is one GET Prefetch will make: count chunks from key.Chunk.
type prefetchGET struct {
	key   cache.Key
	count int
}

// prefetchChunks returns the record chunks that map r, in volume order,
// leaving out zero ranges and data still in memory (pending segments).
func (v *Volume) prefetchChunks(r Range) ([]cache.Key, error) {
	if r.Off < 0 || r.Len <= 0 || r.Off >= v.Size() {
		return nil, nil // a stale trace of a resized or other volume: nothing to do
	}
	n := min(r.Len, v.Size()-r.Off)
	var keys []cache.Key
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usableLocked(); err != nil {
		return nil, err
	}
	v.m.Lookup(uint64(r.Off), uint64(n), func(e extmap.Extent) bool {
		if e.Loc.Vol == 0 && v.pending[e.Loc.Seq] != nil {
			return true // still in memory
		}
		for c := e.Loc.Off / format.ChunkSize; c*format.ChunkSize < e.Loc.Off+e.Len; c++ {
			keys = append(keys, cache.Key{Vol: v.vols[e.Loc.Vol], Seq: e.Loc.Seq, Chunk: uint32(c)})
		}
		return true
	})
	return keys, nil
}
