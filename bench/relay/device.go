package main

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/objstore"
)

// The relay's shape follows urldisk's loopback 1M path so that the two are
// comparable: 4 MiB objects (urldisk's records), at most 8 PUTs in flight,
// whole-object GETs with 8 objects of readahead.
const (
	objSize     = 4 << 20
	maxPuts     = 8
	readahead   = 8
	keepFetched = 16
)

// relay is a blockdev.Device that maps [i*objSize, (i+1)*objSize) to the
// object "<i>" and does nothing else: the least work any NBD server that
// keeps a disk in S3 must do. An object written in part during a session is
// replaced by what was written (the rest reads as zeros): the benchmarks
// write whole objects, and reading the old object to merge would be work
// urldisk's log does not do either.
type relay struct {
	store objstore.Store
	size  int64
	// bg outlives the NBD requests: a PUT or a readahead GET is shared by
	// several requests and must not die with the one that started it.
	bg   context.Context
	bufs sync.Pool // *[]byte of objSize
	sem  chan struct{}

	wmu      sync.Mutex
	open     map[int64]*wbuf // objects being filled
	putting  map[int64]*put  // the latest PUT of an object, until it ends
	inflight map[*put]struct{}
	firstErr error // of any PUT: a later Flush must fail even if it started after

	rmu     sync.Mutex
	fetched map[int64]*fetch // done or in flight
	lru     list.List        // of done *fetch, most recently used at the front
}

type span struct{ lo, hi int } // written bytes [lo, hi) of an object

type wbuf struct {
	data  *[]byte
	spans []span // sorted, merged
}

type put struct {
	i    int64
	data *[]byte
	n    int
	prev *put // an earlier PUT of the same object: this one must land after it
	done chan struct{}
	err  error
}

type fetch struct {
	i    int64
	done chan struct{}
	data *[]byte
	n    int // bytes the object held; the rest of an object reads as zeros
	err  error
	refs int // the map's and each reader's; the buffer is pooled at zero
	elem *list.Element
}

func newRelay(bg context.Context, store objstore.Store, size int64) *relay {
	r := &relay{
		store:    store,
		size:     size,
		bg:       bg,
		sem:      make(chan struct{}, maxPuts),
		open:     map[int64]*wbuf{},
		putting:  map[int64]*put{},
		inflight: map[*put]struct{}{},
		fetched:  map[int64]*fetch{},
	}
	r.bufs.New = func() any { b := make([]byte, objSize); return &b }
	return r
}

func key(i int64) string { return strconv.FormatInt(i, 10) }

// objLen is the length of object i: the last one may be short.
func (r *relay) objLen(i int64) int {
	return int(min(objSize, r.size-i*objSize))
}

func (r *relay) Size() int64    { return r.size }
func (r *relay) BlockSize() int { return 4096 }
func (r *relay) ReadOnly() bool { return false }

func (r *relay) check(off int64, n int) error {
	if off < 0 || off+int64(n) > r.size {
		return blockdev.ErrOutOfRange
	}
	return nil
}

// pieces calls fn for each object-sized piece of [off, off+len(p)).
func pieces(p []byte, off int64, fn func(i int64, within int, q []byte) error) error {
	for len(p) > 0 {
		i := off / objSize
		within := int(off % objSize)
		n := min(len(p), objSize-within)
		if err := fn(i, within, p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (r *relay) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := r.check(off, len(p)); err != nil {
		return err
	}
	return pieces(p, off, func(i int64, within int, q []byte) error {
		return r.writeObj(ctx, i, within, q)
	})
}

func (r *relay) writeObj(ctx context.Context, i int64, within int, q []byte) error {
	r.wmu.Lock()
	wb := r.open[i]
	if wb == nil {
		wb = &wbuf{data: r.bufs.Get().(*[]byte)}
		r.open[i] = wb
	}
	// Under the lock: a Flush snapshots whole buffers, and a copy of 1 MiB
	// is short next to the PUT it feeds.
	copy((*wb.data)[within:], q)
	wb.add(span{within, within + len(q)})
	var pt *put
	if wb.written() == r.objLen(i) {
		delete(r.open, i)
		// In the same critical section: a read in between would find the
		// object neither open nor being PUT and fetch its old version.
		pt = r.newPutLocked(i, wb.data)
	}
	r.wmu.Unlock()
	r.invalidate(i)
	if pt == nil {
		return nil
	}
	return r.startPut(ctx, pt)
}

// newPutLocked registers a PUT of data as object i, so that reads and
// Flush see it before it starts; needs wmu held.
func (r *relay) newPutLocked(i int64, data *[]byte) *put {
	pt := &put{i: i, data: data, n: r.objLen(i), prev: r.putting[i], done: make(chan struct{})}
	r.putting[i] = pt
	r.inflight[pt] = struct{}{}
	return pt
}

// startPut runs pt in the background once one of the maxPuts slots is
// free; waiting for the slot is the writers' back-pressure.
func (r *relay) startPut(ctx context.Context, pt *put) error {
	i, data := pt.i, pt.data
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		r.endPut(pt, fmt.Errorf("wait for a PUT slot for object %d: %w", i, ctx.Err()))
		return ctx.Err()
	}
	go func() {
		defer func() { <-r.sem }()
		if pt.prev != nil {
			<-pt.prev.done
		}
		err := r.store.Put(r.bg, key(i), (*data)[:pt.n])
		if err != nil {
			err = fmt.Errorf("put object %d: %w", i, err)
		}
		r.endPut(pt, err)
	}()
	return nil
}

func (r *relay) endPut(pt *put, err error) {
	r.wmu.Lock()
	pt.err = err
	if err != nil && r.firstErr == nil {
		r.firstErr = err
	}
	delete(r.inflight, pt)
	if r.putting[pt.i] == pt {
		delete(r.putting, pt.i)
	}
	r.wmu.Unlock()
	// A readahead GET may have fetched the object's old version while
	// this PUT was in flight.
	r.invalidate(pt.i)
	close(pt.done)
	r.bufs.Put(pt.data)
}

func (wb *wbuf) add(s span) {
	out := wb.spans[:0:0]
	for _, t := range wb.spans {
		switch {
		case t.hi < s.lo:
			out = append(out, t)
		case s.hi < t.lo:
			out = append(out, s)
			s = t
		default:
			s = span{min(s.lo, t.lo), max(s.hi, t.hi)}
		}
	}
	wb.spans = append(out, s)
}

func (wb *wbuf) written() int {
	n := 0
	for _, s := range wb.spans {
		n += s.hi - s.lo
	}
	return n
}

// zeroGaps clears the bytes of a partial buffer that no write reached:
// a pooled buffer holds an older object's bytes.
func (wb *wbuf) zeroGaps(n int) {
	lo := 0
	for _, s := range wb.spans {
		clear((*wb.data)[lo:s.lo])
		lo = s.hi
	}
	clear((*wb.data)[lo:n])
}

func (r *relay) Flush(ctx context.Context) error {
	var parts []*put
	r.wmu.Lock()
	for i, wb := range r.open {
		// A snapshot, not the buffer: later writes complete it and PUT it
		// again, after this PUT (put.prev).
		wb.zeroGaps(r.objLen(i))
		snap := r.bufs.Get().(*[]byte)
		copy(*snap, (*wb.data)[:r.objLen(i)])
		parts = append(parts, r.newPutLocked(i, snap))
	}
	r.wmu.Unlock()
	for k, pt := range parts {
		if err := r.startPut(ctx, pt); err != nil {
			for _, rest := range parts[k+1:] {
				r.endPut(rest, err) // registered: a later Flush would wait for them
			}
			return fmt.Errorf("flush: %w", err)
		}
	}
	r.wmu.Lock()
	wait := make([]*put, 0, len(r.inflight))
	for pt := range r.inflight {
		wait = append(wait, pt)
	}
	r.wmu.Unlock()
	for _, pt := range wait {
		select {
		case <-pt.done:
		case <-ctx.Done():
			return fmt.Errorf("flush: wait for PUTs: %w", ctx.Err())
		}
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.firstErr != nil {
		return fmt.Errorf("flush: %w", r.firstErr)
	}
	return nil
}

func (r *relay) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := r.check(off, len(p)); err != nil {
		return err
	}
	return pieces(p, off, func(i int64, within int, q []byte) error {
		if r.readPending(i, within, q) {
			return nil
		}
		f := r.get(i)
		r.prefetch(i)
		defer r.release(f)
		select {
		case <-f.done:
		case <-ctx.Done():
			return fmt.Errorf("read object %d: %w", i, ctx.Err())
		}
		if f.err != nil {
			return f.err
		}
		n := copy(q, (*f.data)[min(within, f.n):f.n])
		clear(q[n:])
		return nil
	})
}

// readPending serves a read from data not yet in the store: an object being
// filled or being PUT. Reports whether it did.
func (r *relay) readPending(i int64, within int, q []byte) bool {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if wb := r.open[i]; wb != nil {
		wb.zeroGaps(r.objLen(i))
		copy(q, (*wb.data)[within:])
		return true
	}
	if pt := r.putting[i]; pt != nil {
		copy(q, (*pt.data)[within:pt.n])
		return true
	}
	return false
}

// get returns object i's fetch, started if need be, with a reference the
// caller releases.
func (r *relay) get(i int64) *fetch {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	f := r.fetched[i]
	if f == nil {
		f = r.startFetch(i)
	} else if f.elem != nil {
		r.lru.MoveToFront(f.elem)
	}
	f.refs++
	return f
}

// prefetch starts GETs of the objects after i, as urldisk's readahead does
// on a sequential read.
func (r *relay) prefetch(i int64) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	for j := i + 1; j <= i+readahead && j*objSize < r.size; j++ {
		if r.fetched[j] == nil {
			r.startFetch(j)
		}
	}
}

// startFetch needs rmu held.
func (r *relay) startFetch(i int64) *fetch {
	f := &fetch{i: i, done: make(chan struct{}), data: r.bufs.Get().(*[]byte), refs: 1}
	r.fetched[i] = f
	go func() {
		// A whole-object range: versitygw sends a whole object with
		// sendfile(2) and copies a part of one through user space.
		n, err := r.store.GetRange(r.bg, key(i), 0, (*f.data)[:r.objLen(i)])
		if errors.Is(err, objstore.ErrNotFound) {
			n, err = 0, nil
		}
		if err != nil {
			err = fmt.Errorf("get object %d: %w", i, err)
		}
		f.n, f.err = n, err
		close(f.done)
		r.rmu.Lock()
		defer r.rmu.Unlock()
		if r.fetched[i] != f {
			return // invalidated while in flight
		}
		if err != nil {
			// Not kept: the next read retries.
			delete(r.fetched, i)
			r.unref(f)
			return
		}
		f.elem = r.lru.PushFront(f)
		for r.lru.Len() > keepFetched {
			r.drop(r.lru.Back().Value.(*fetch))
		}
	}()
	return f
}

// drop removes f from the map and the LRU; needs rmu held.
func (r *relay) drop(f *fetch) {
	if r.fetched[f.i] == f {
		delete(r.fetched, f.i)
	}
	if f.elem != nil {
		r.lru.Remove(f.elem)
		f.elem = nil
	}
	r.unref(f)
}

func (r *relay) unref(f *fetch) {
	f.refs--
	if f.refs == 0 {
		r.bufs.Put(f.data)
	}
}

func (r *relay) release(f *fetch) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.unref(f)
}

// invalidate forgets a fetched copy of object i after a write to it.
func (r *relay) invalidate(i int64) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	if f := r.fetched[i]; f != nil {
		r.drop(f)
	}
}

func (r *relay) WriteZeroes(ctx context.Context, off, length int64) error {
	if err := r.check(off, int(length)); err != nil {
		return err
	}
	zero := make([]byte, min(length, objSize))
	for length > 0 {
		n := min(length, int64(len(zero)))
		if err := r.WriteAt(ctx, zero[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Trim reads as zeros afterwards, as urldisk's does.
func (r *relay) Trim(ctx context.Context, off, length int64) error {
	return r.WriteZeroes(ctx, off, length)
}
