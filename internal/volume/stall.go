package volume

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
)

// ErrFlushTimeout: Flush waited Options.FlushTimeout for the object store
// and gave up. The writes it covered are still queued and being uploaded;
// they are simply not yet durable.
var ErrFlushTimeout = errors.New("flush timed out waiting for the object store (writes stay queued)")

// upload is one record upload in progress, tracked so that a stalled store
// is reported (the watchdog) and measured (Stats). Guarded by Volume.mu.
type upload struct {
	seq    uint64
	key    string
	queued time.Time // sealed (Clock time); it may wait for an upload slot
	// started is when the first request was sent (Clock time); zero while
	// queued behind other uploads.
	started  time.Time
	attempts int
	op       string // the request being waited for
	lastErr  error
	warned   bool        // logged as stalled; counted in Stats.StalledUploads
	timer    *time.Timer // fires the stall warning
}

// Stats are the volume's upload counters and gauges, for metrics.
type Stats struct {
	// PendingUploads counts record uploads not yet finished, including
	// those queued for an upload slot.
	PendingUploads int
	// StalledUploads counts uploads that have waited longer than
	// Options.StallWarn (each was logged at WARN) and not yet finished.
	StalledUploads int
	// OldestPendingAge is how long the oldest pending upload has waited
	// since its record was sealed; zero if none.
	OldestPendingAge time.Duration
	// BufferedBytes are written bytes not yet durable (in memory).
	BufferedBytes int64
	// UploadRetries counts failed upload requests that were retried;
	// RequestTimeouts the store requests (of uploads and of reads) that
	// failed by Options.StoreTimeout.
	UploadRetries   uint64
	RequestTimeouts uint64
	// FlushTimeouts counts Flush calls that returned ErrFlushTimeout.
	FlushTimeouts uint64
	// CacheFillsSkipped counts landed records not put into the cache
	// because others were waiting for an upload slot (a bulk write
	// stream; see cacheRecord).
	CacheFillsSkipped uint64
}

// Stats returns the volume's upload statistics. Safe for concurrent use.
func (v *Volume) Stats() Stats {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := Stats{
		PendingUploads:    len(v.uploads),
		BufferedBytes:     v.buffered,
		UploadRetries:     v.uploadRetries.Load(),
		RequestTimeouts:   v.requestTimeouts.Load(),
		FlushTimeouts:     v.flushTimeouts.Load(),
		CacheFillsSkipped: v.fillsSkipped.Load(),
	}
	now := v.opts.Clock.Now()
	for u := range v.uploads {
		if u.warned {
			s.StalledUploads++
		}
		s.OldestPendingAge = max(s.OldestPendingAge, now.Sub(u.queued))
	}
	return s
}

// requestTimeout is the deadline of one store request moving n bytes:
// StoreTimeout per started 8 MiB, so large records on a slow link are not
// cut while they make progress.
func (v *Volume) requestTimeout(n int) time.Duration {
	const unit = 8 << 20
	return v.opts.StoreTimeout * time.Duration(max(1, (n+unit-1)/unit))
}

// storeRequest runs one store request of an upload under its own deadline
// (see Options.StoreTimeout), recording which request the upload waits for.
func (v *Volume) storeRequest(u *upload, op string, n int, fn func(ctx context.Context) error) error {
	v.mu.Lock()
	u.op = op
	u.attempts++
	v.mu.Unlock()
	ctx, cancel := context.WithTimeout(v.ctx, v.requestTimeout(n))
	defer cancel()
	err := fn(ctx)
	if err != nil && errors.Is(err, context.DeadlineExceeded) && v.ctx.Err() == nil {
		v.requestTimeouts.Add(1)
	}
	v.mu.Lock()
	u.lastErr = err
	v.mu.Unlock()
	return err
}

// trackUploadLocked registers the upload of record seq as queued.
func (v *Volume) trackUploadLocked(seq uint64, key string) *upload {
	u := &upload{seq: seq, key: key, queued: v.opts.Clock.Now(), op: "wait for an upload slot"}
	v.uploads[u] = struct{}{}
	return u
}

// uploadStarted arms the stall warning once the upload holds a slot:
// waiting for a slot behind stalled uploads is their stall, not its own.
func (v *Volume) uploadStarted(u *upload) {
	v.mu.Lock()
	defer v.mu.Unlock()
	u.started = v.opts.Clock.Now()
	u.timer = time.AfterFunc(v.opts.StallWarn, func() { v.warnStalled(u) })
}

// warnStalled logs, once, an upload that has waited StallWarn.
func (v *Volume) warnStalled(u *upload) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.uploads[u]; !ok {
		return
	}
	u.warned = true
	args := []any{"op", u.op, "key", u.key, "seq", u.seq,
		"waited", v.opts.Clock.Now().Sub(u.started).Round(time.Millisecond), "attempts", u.attempts,
		"request_timeout", v.requestTimeout(0)}
	if u.lastErr != nil {
		args = append(args, "last_err", u.lastErr)
	}
	v.log.Warn("object store stalled: record upload is waiting; flushes wait for it", args...)
}

// uploadDone stops tracking u, saying so if it had been reported stalled.
func (v *Volume) uploadDone(u *upload) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.uploads, u)
	if u.timer != nil {
		u.timer.Stop()
	}
	if !u.warned {
		return
	}
	took := v.opts.Clock.Now().Sub(u.started).Round(time.Millisecond)
	if v.ctx.Err() != nil {
		v.log.Warn("stalled record upload abandoned: volume closed", "key", u.key, "seq", u.seq, "waited", took, "attempts", u.attempts)
		return
	}
	v.log.Info("object store recovered: stalled record upload finished", "key", u.key, "seq", u.seq, "took", took, "attempts", u.attempts)
}

// oldestUploadLocked returns the upload that has waited longest, or nil.
func (v *Volume) oldestUploadLocked() *upload {
	var o *upload
	for u := range v.uploads {
		if o == nil || u.queued.Before(o.queued) || u.queued.Equal(o.queued) && u.seq < o.seq {
			o = u
		}
	}
	return o
}

// readRequest runs one GET of a read under its own deadline (StoreTimeout
// per 8 MiB, as an upload's). fetchFrames makes a bounded number of
// attempts, so a store that accepts connections and never answers fails
// the read with an error within about four deadlines, instead of holding
// it for the store client's own timeouts (minutes for S3) without a word.
// progress, if set, is called as the bytes arrive (objstore.ProgressGetter)
// by a store that can.
func (v *Volume) readRequest(ctx context.Context, key string, off int64, p []byte, progress func(n int)) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, v.requestTimeout(len(p)))
	defer cancel()
	var n int
	var err error
	if pg, ok := v.pool.store.(objstore.ProgressGetter); ok && progress != nil {
		n, err = pg.GetRangeProgress(rctx, key, off, p, progress)
	} else {
		n, err = v.pool.store.GetRange(rctx, key, off, p)
	}
	if err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		v.requestTimeouts.Add(1)
	}
	return n, err
}

// watchRead arms the stall warning of a read's fetch of record key: still
// waiting after StallWarn, it is logged at WARN naming the request (at
// most one such line per StallWarn for the volume), and its end at INFO
// or WARN. The returned function ends the watch with the fetch's error.
func (v *Volume) watchRead(key string) func(error) {
	start := time.Now()
	var warned atomic.Bool
	t := time.AfterFunc(v.opts.StallWarn, func() {
		last := v.readStallWarned.Load()
		now := time.Now().UnixNano()
		if now-last < int64(v.opts.StallWarn) || !v.readStallWarned.CompareAndSwap(last, now) {
			return
		}
		warned.Store(true)
		v.log.Warn("object store stalled: read is waiting", "op", "get-range", "key", key,
			"waited", time.Since(start).Round(time.Millisecond), "request_timeout", v.requestTimeout(0))
	})
	return func(err error) {
		t.Stop()
		if !warned.Load() {
			return
		}
		took := time.Since(start).Round(time.Millisecond)
		if err != nil {
			v.log.Warn("stalled read failed", "key", key, "took", took, "err", err)
			return
		}
		v.log.Info("object store recovered: stalled read finished", "key", key, "took", took)
	}
}
