package agent

import (
	"cmp"
	"container/list"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
)

// device wraps a machine's volume for its NBD export: it counts requests
// for the metrics, remembers the first request it served (for downtime),
// and records the pages the machine touches (the access trace for prefetch
// on the next host). Fencing is noticed by the export (internal/export),
// which also sees a fence no request ran into.
type device struct {
	blockdev.Device
	m       *machineMetrics
	trace   *tracer // nil: no trace
	onFirst func(time.Time)

	first atomic.Int64 // unix nanos of the first served request; 0 before
}

func newDevice(d blockdev.Device, m *machineMetrics, trace *tracer, onFirst func(time.Time)) *device {
	return &device{Device: d, m: m, trace: trace, onFirst: onFirst}
}

// FirstIO is when the first request was served (zero before).
func (d *device) FirstIO() time.Time {
	if n := d.first.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

func (d *device) done(op string, n int, err error) {
	d.m.requests.WithLabelValues(op).Inc()
	if err != nil {
		d.m.errors.WithLabelValues(op).Inc()
		return
	}
	if n > 0 {
		d.m.bytes.WithLabelValues(op).Add(float64(n))
	}
	if d.first.Load() == 0 {
		now := time.Now()
		if d.first.CompareAndSwap(0, now.UnixNano()) && d.onFirst != nil {
			d.onFirst(now)
		}
	}
}

// ReadAt implements blockdev.Device.
func (d *device) ReadAt(ctx context.Context, p []byte, off int64) error {
	return d.access("read", off, len(p), d.Device.ReadAt(ctx, p, off))
}

// WriteAt implements blockdev.Device.
func (d *device) WriteAt(ctx context.Context, p []byte, off int64) error {
	return d.access("write", off, len(p), d.Device.WriteAt(ctx, p, off))
}

// access accounts a read or write of n bytes at off that returned err and,
// when it was served, adds its pages to the trace.
func (d *device) access(op string, off int64, n int, err error) error {
	d.done(op, n, err)
	if err == nil {
		d.trace.touch(off, int64(n))
	}
	return err
}

// WriteZeroes implements blockdev.Device.
func (d *device) WriteZeroes(ctx context.Context, off, length int64) error {
	err := d.Device.WriteZeroes(ctx, off, length)
	d.done("write_zeroes", 0, err)
	return err
}

// Trim implements blockdev.Device.
func (d *device) Trim(ctx context.Context, off, length int64) error {
	err := d.Device.Trim(ctx, off, length)
	d.done("trim", 0, err)
	return err
}

// Flush implements blockdev.Device.
func (d *device) Flush(ctx context.Context) error {
	start := time.Now()
	err := d.Device.Flush(ctx)
	if err == nil {
		d.m.flush.Observe(time.Since(start).Seconds())
	}
	d.done("flush", 0, err)
	return err
}

// tracer keeps the most recently touched pages of a volume, at most max,
// and remembers when each was first touched in this run. Its snapshot
// lists them in first-touch order: the order a machine that starts again
// (a migrated machine boots on its new host) will need them in, so the
// next host's prefetch fetches them in that order. The recency bound keeps
// the recent working set of a long-running machine rather than only its
// boot. Safe for concurrent use; a nil *tracer records nothing.
type tracer struct {
	pageSize int64
	max      int

	mu    sync.Mutex
	order *list.List               // of *tracedPage, least recently touched first; guarded by mu
	pages map[uint64]*list.Element // guarded by mu
	next  uint64                   // first-touch sequence of the next new page; guarded by mu
}

// tracedPage is a page in a tracer.
type tracedPage struct {
	page  uint64
	first uint64 // first-touch sequence number (lower: touched earlier)
}

func newTracer(pageSize int64, max int) *tracer {
	return &tracer{pageSize: pageSize, max: max, order: list.New(), pages: map[uint64]*list.Element{}}
}

// maxTouchPages bounds the pages one request records (a huge sequential
// request is not worth remembering page by page).
const maxTouchPages = 64

func (t *tracer) touch(off, n int64) {
	if t == nil || n <= 0 {
		return
	}
	first, last := off/t.pageSize, (off+n-1)/t.pageSize
	if last-first >= maxTouchPages {
		last = first + maxTouchPages - 1
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for pg := uint64(first); pg <= uint64(last); pg++ {
		if e, ok := t.pages[pg]; ok {
			t.order.MoveToBack(e)
			continue
		}
		t.pages[pg] = t.order.PushBack(&tracedPage{page: pg, first: t.next})
		t.next++
		if t.order.Len() > t.max {
			old := t.order.Front()
			t.order.Remove(old)
			delete(t.pages, old.Value.(*tracedPage).page)
		}
	}
}

// snapshot returns the recorded pages in the order they were first
// touched.
func (t *tracer) snapshot() []uint64 {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	tps := make([]*tracedPage, 0, t.order.Len())
	for e := t.order.Front(); e != nil; e = e.Next() {
		tps = append(tps, e.Value.(*tracedPage))
	}
	t.mu.Unlock()
	slices.SortFunc(tps, func(a, b *tracedPage) int { return cmp.Compare(a.first, b.first) })
	out := make([]uint64, len(tps))
	for i, tp := range tps {
		out[i] = tp.page
	}
	return out
}
