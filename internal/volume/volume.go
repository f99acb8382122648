package volume

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/extmap"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/journal"
	"github.com/urldisk/urldisk/internal/objstore"
)

// Cache is the host read cache as the volume uses it (cache.Cache).
// Implementations verify what they return and are safe for concurrent use.
type Cache interface {
	// ReadAt copies len(p) bytes at off of the chunk; false on a miss.
	ReadAt(key cache.Key, p []byte, off int) (bool, error)
	// Put stores a chunk's bytes (copied).
	Put(key cache.Key, data []byte) error
}

var _ Cache = (*cache.Cache)(nil)

// Options configure an attached volume. Zero values pick the defaults.
type Options struct {
	// ReadOnly attaches without fencing; writes fail with ErrReadOnly.
	ReadOnly bool
	// Cache is the host read cache; nil means every read miss is a GET.
	Cache Cache
	// SegmentBytes: a segment is sealed into a record at this many data
	// bytes. Default 4 MiB.
	SegmentBytes int
	// BufferBytes bounds written bytes not yet durable; writes wait beyond
	// it (backpressure). Default 64 MiB.
	BufferBytes int64
	// Uploads is the number of record uploads in flight. Default 8.
	Uploads int
	// IdleFlush seals the open segment after this long without writes.
	// Default 1s; negative disables.
	IdleFlush time.Duration
	// SnapshotEvery writes a snapshot after this many records. Default 256.
	SnapshotEvery int
	// Readahead: a sequential read miss fetches, in one GET, the aligned
	// window of this many 64 KiB chunks of the record around the missed
	// chunk. Default 64 (4 MiB: a whole default-sized record), so reads of
	// a record in any order, and concurrent readers, share one GET.
	Readahead int
	// ReadaheadBytes bounds the readahead windows in flight (fetched and
	// not yet in the cache) or parked (in the cache, and kept in memory
	// for their stream until it has read them, or evicted to make room)
	// of all sequential streams together: their memory. A stream's depth
	// grows while its reads still wait for the store, up to this.
	// Default 64 MiB (16 default windows).
	ReadaheadBytes int64
	// ReadaheadFillBytes is how far into one sequential stream readahead
	// windows are put in the cache. Beyond it a window's frames are only
	// handed to the stream's readers, so one long pass over a disk (a
	// copy, a backup, a scan) neither evicts the working set nor spends
	// CPU writing bytes it will not read again into the cache slab. Data
	// read twice within the bound is served from the cache the second
	// time. Default: a quarter of the cache's capacity if the cache reports
	// one (cache.Cache does), else 64 MiB, so a pass that fits the cache
	// comfortably is still re-read warm. Negative: no bound.
	ReadaheadFillBytes int64
	// CompactEvery runs Compact this often in the background (read-write
	// volumes). Zero: never automatically.
	CompactEvery time.Duration
	// PolicyPoll is how often a writer checks its automatic-checkpoint
	// policy (see Pool.SetPolicy). Default 1m; negative disables.
	PolicyPoll time.Duration
	// Follow, for read-only volumes, polls the log this often and applies
	// new records (a read replica). Zero: no following.
	Follow time.Duration
	// StoreTimeout is the deadline of one store request of a record upload
	// (the PutIfAbsent, and the read that judges a taken slot) for an
	// object of up to 8 MiB; bigger objects get proportionally longer. A
	// request that gets no answer in time is cancelled and retried with
	// exponential backoff and jitter (an S3 SDK's own retries run inside
	// that deadline, so they cannot stretch it). Without it a stalled
	// store holds an upload, and every flush behind it, forever. Each GET
	// of a read that misses the cache has the same deadline; a read makes
	// four attempts, then fails (EIO over NBD).
	// Default 30s.
	StoreTimeout time.Duration
	// StallWarn: a record upload (or a Flush) still waiting after this
	// long is logged once at WARN, naming the operation, and counted as
	// stalled in Stats until it completes (then logged at INFO). A read
	// waiting for the store this long is logged at WARN too, at most once
	// per StallWarn for the volume.
	// Default 5s.
	StallWarn time.Duration
	// FlushTimeout bounds how long Flush waits for the object store; past
	// it Flush returns an error wrapping ErrFlushTimeout (EIO over NBD).
	// The writes stay queued and their uploads go on, so a later Flush can
	// still succeed; nothing is acknowledged that is not durable.
	// Zero (the default) or negative waits as long as it takes: an EIO on FLUSH makes
	// a guest's filesystem abort its journal or remount read-only, turning
	// a transient store outage into a guest outage, while a stalled FLUSH
	// resumes by itself once the store answers, like a local disk or a
	// hard NFS mount. Set it where something above can do better with an
	// error (e.g. fail over).
	FlushTimeout time.Duration
	// Clock and Logger; defaults: wall clock, the pool's logger.
	Clock  Clock
	Logger *slog.Logger
}

func (o Options) withDefaults(p *Pool) Options {
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = 4 << 20
	}
	if o.BufferBytes <= 0 {
		o.BufferBytes = 64 << 20
	}
	if o.Uploads <= 0 {
		o.Uploads = 8
	}
	if o.IdleFlush == 0 {
		o.IdleFlush = time.Second
	}
	if o.SnapshotEvery <= 0 {
		o.SnapshotEvery = 256
	}
	if o.PolicyPoll == 0 {
		o.PolicyPoll = time.Minute
	}
	if o.Readahead <= 0 {
		o.Readahead = 64
	}
	if o.ReadaheadBytes <= 0 {
		o.ReadaheadBytes = 64 << 20
	}
	if o.ReadaheadFillBytes == 0 {
		o.ReadaheadFillBytes = 64 << 20
		if c, ok := o.Cache.(interface{ Stats() cache.Stats }); ok && c.Stats().Capacity > 0 {
			o.ReadaheadFillBytes = max(o.ReadaheadFillBytes, c.Stats().Capacity/4)
		}
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 30 * time.Second
	}
	if o.StallWarn <= 0 {
		o.StallWarn = 5 * time.Second
	}
	if o.Clock == nil {
		o.Clock = p.clock
	}
	if o.Logger == nil {
		o.Logger = p.log
	}
	return o
}

// maxSegmentExtents seals a segment with this many extents, bounding trailers.
const maxSegmentExtents = 64 << 10

// segment is a group of writes that becomes one data record.
type segment struct {
	id   journal.SegID
	seq  uint64 // current slot; changes if the journal moves the segment
	b    *format.Builder
	exts []format.Extent
	// restore, if set, makes this segment a restore or resize record (no
	// data): its Type, RestoreVol, RestoreSeq and NewSize are used.
	restore *format.Record
	// rec and obj are set when sealed; obj is the encoded record.
	rec *format.Record
	obj []byte
	// sums holds each chunk's sub-block CRC-32Cs (the cache takes them as
	// they are), taken as the data is appended (appendData: the first
	// summed bytes, whole sub-blocks) and completed when sealed; dataSum,
	// set when sealed, is the CRC-32C of the encoded data section (the
	// upload's whole-object checksum is combined from it). One CRC pass
	// over the data serves the frames, the cache and the upload.
	sums    []cache.Sums
	summed  uint64
	dataSum uint32
	bytes   int64 // accounted in Volume.buffered
	// cached: its chunks are in the host cache (or there is none), so once
	// durable it may leave memory.
	cached bool
	// moved: the journal moved it to another slot (an upload of its old
	// object may still be running). reuse: its one upload landed on the
	// first request, so once it leaves memory nothing reads its buffer
	// any more and b may serve a later segment (Volume.spare).
	moved, reuse bool
}

// snapCandidate is a map clone taken when segment seg (slot seq) was sealed;
// it becomes a snapshot once seg is durable, unless a move intervened.
type snapCandidate struct {
	seg   journal.SegID
	seq   uint64
	m     *extmap.Map
	vols  []string
	time  int64
	moves uint64
	size  uint64 // the volume's size at seq
}

// Volume is an attached volume; it implements blockdev.Device.
type Volume struct {
	pool  *Pool
	desc  *format.VolumeDesc
	size  atomic.Uint64 // bytes; desc.Size until a resize (resize.go)
	opts  Options
	log   *slog.Logger
	cache Cache

	ctx    context.Context // cancelled by Close after the last flush
	cancel context.CancelFunc
	wg     sync.WaitGroup // uploads, snapshot writes, idle loop
	upSem  chan struct{}
	stop   chan struct{} // stops the idle loop

	seq seqDetector // sequential-read detection
	ra  readahead   // sequential streams' readahead (readahead.go)

	fmu      sync.Mutex
	inflight map[recKey][]*fetchCall // fetches in progress per record; guarded by fmu

	// key opens (and seals) the lineage's frames; nil for an unencrypted
	// volume. nonces is the writer's frame nonce source (read-write only).
	key    *format.DataKey
	nonces *format.Nonces
	// packer compresses the records of a compressed volume (nil: not
	// compressed); used under mu, where records are sealed.
	packer *format.Packer

	mu sync.Mutex // guards everything below
	// m is the live map: durable records plus pending segments.
	m    *extmap.Map
	vols []string
	// w is the journal writer; nil when read-only.
	w *journal.Writer
	// open is the segment receiving writes, or nil.
	open *segment
	// segs holds every not-yet-durable segment; pending indexes them by slot.
	segs        map[journal.SegID]*segment
	pending     map[uint64]*segment
	nextSeg     journal.SegID
	lastSealed  journal.SegID
	durableDone journal.SegID
	buffered    int64
	lastSegData uint64 // data bytes of the last sealed segment (sizes the next one's buffer)
	lastWrite   time.Time
	progress    chan struct{} // closed and replaced whenever durability, fencing or closing changes
	fenced      bool
	closed      bool
	fatal       error
	moves       uint64
	lastTime    int64  // time of our newest record; record times never go back
	sinceSnap   int    // records sealed since the last snapshot candidate
	lastSnap    uint64 // seq of the newest snapshot written or replayed
	snapCand    *snapCandidate
	st          journal.State // replay state at attach
	// uploads are the record uploads started and not finished, for the
	// stall watchdog and Stats.
	uploads map[*upload]struct{}
	// uploadTurn is closed once the newest started upload holds an upload
	// slot; the next one waits for it (see startUpload). Nil: none yet.
	uploadTurn chan struct{}
	// spare holds builders of retired segments for new ones (with the
	// segments' own, at most maxBuildersLocked; idleSpareBuilders once
	// writes pause): a fresh multi-MiB buffer per record costs its zeroing
	// and garbage collection, a tenth of a sequential writer's CPU.
	spare []*format.Builder

	// Counters for Stats, updated without mu.
	uploadRetries   atomic.Uint64
	requestTimeouts atomic.Uint64
	flushTimeouts   atomic.Uint64
	fillsSkipped    atomic.Uint64
	// readStallWarned is when (unix nanoseconds) a stalled read was last
	// logged: a stalled store stalls every read at once, one WARN per
	// StallWarn says it.
	readStallWarned atomic.Int64
}

var _ blockdev.Device = (*Volume)(nil)

type fenceMeta struct {
	Host string    `json:"host"`
	PID  int       `json:"pid"`
	Time time.Time `json:"time"`
}

// Open attaches the volume called name.
func (p *Pool) Open(ctx context.Context, name string, o Options) (*Volume, error) {
	desc, err := p.Resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	return p.open(ctx, desc, o, ^uint64(0))
}

func (p *Pool) open(ctx context.Context, desc *format.VolumeDesc, o Options, limit uint64) (*Volume, error) {
	if !o.ReadOnly && !p.marker.ConditionalCreate {
		return nil, fmt.Errorf("open %s read-write: %w", desc.Name, ErrNoConditionalCreate)
	}
	img, err := p.loadImage(ctx, desc, limit)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", desc.Name, err)
	}
	return p.openImage(ctx, img, o)
}

// openImage attaches a replayed image.
func (p *Pool) openImage(ctx context.Context, img *image, o Options) (*Volume, error) {
	o = o.withDefaults(p)
	desc := img.desc
	// Before anything is served: a wrong or missing key fails the attach
	// with an error naming the fingerprints, not every read with EIO.
	key, err := p.dataKey(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", desc.Name, err)
	}
	vctx, cancel := context.WithCancel(context.Background())
	v := &Volume{
		pool: p, desc: desc, opts: o, log: o.Logger.With("volume", desc.Name), cache: o.Cache,
		ctx: vctx, cancel: cancel, upSem: make(chan struct{}, o.Uploads), stop: make(chan struct{}),
		inflight: map[recKey][]*fetchCall{},
		key:      key,
		m:        img.m, vols: img.vols, segs: map[journal.SegID]*segment{}, pending: map[uint64]*segment{},
		progress: make(chan struct{}), uploads: map[*upload]struct{}{}, st: img.st, sinceSnap: img.sinceSnap, lastSnap: img.snapSeq, lastTime: img.lastTime,
	}
	v.size.Store(img.size)
	if desc.Compression != "" {
		v.packer = new(format.Packer)
	}
	v.seq.init()
	v.ra.init(o.Readahead*format.ChunkSize, o.ReadaheadBytes)
	if !o.ReadOnly {
		if err := v.attachWriter(ctx, img); err != nil {
			cancel()
			return nil, fmt.Errorf("open %s: %w", desc.Name, err)
		}
		if o.IdleFlush > 0 {
			v.wg.Add(1)
			go v.tick(max(v.opts.IdleFlush/4, time.Millisecond), v.idleSeal)
		}
		if o.PolicyPoll >= 0 {
			v.wg.Add(1)
			go v.autoCheckpointLoop(max(o.PolicyPoll, time.Millisecond))
		}
		if o.CompactEvery > 0 {
			v.wg.Add(1)
			go v.compactLoop(o.CompactEvery)
		}
	} else if o.Follow > 0 {
		v.wg.Add(1)
		go v.follow(img, o.Follow)
	}
	return v, nil
}

// attachWriter fences the volume: creates record t+1 as a fence of epoch
// E+1, replaying further whenever the slot is taken.
func (v *Volume) attachWriter(ctx context.Context, img *image) error {
	if err := v.pool.requireConditionalCreate(ctx, v.log); err != nil {
		return err
	}
	id, err := newWriterID()
	if err != nil {
		return err
	}
	// Frame nonces are this attach's random writer id and a counter: no
	// other writer (a takeover, a clone's, a zombie) can produce them.
	v.nonces = format.NewNonces(id)
	host, _ := os.Hostname()
	meta, _ := json.Marshal(fenceMeta{Host: host, PID: os.Getpid(), Time: v.opts.Clock.Now().UTC()})
	store := v.pool.store
	backoff := 20 * time.Millisecond
	for attempt := 0; ; attempt++ {
		// The fence vouches for the head it replayed to (its durable
		// watermark), so a later deletion of any of those records is
		// detected as loss rather than replayed around (journal.Gaps).
		rec := &format.Record{Type: format.RecordFence, Seq: img.st.Seq + 1, Epoch: img.st.Epoch + 1, Writer: id,
			Time: max(v.opts.Clock.Now().UnixNano(), img.lastTime+1), Volume: v.desc.ID, Durable: img.st.Seq, Meta: meta}
		obj, err := format.EncodeRecord(rec, nil)
		if err != nil {
			return err
		}
		err = store.PutIfAbsent(ctx, format.LogKey(v.desc.ID, rec.Seq), obj)
		if errors.Is(err, objstore.ErrExists) {
			r, rerr := v.pool.readRecordAt(ctx, v.desc.ID, rec.Seq)
			if rerr == nil && r.Type == format.RecordFence && r.Writer == id && r.Epoch == rec.Epoch {
				err = nil // our own fence; the first response was lost
			} else if rerr == nil {
				// Another writer got there first: learn its records, try again.
				err := v.pool.replayFrom(ctx, img, ^uint64(0))
				if errors.Is(err, ErrLogGap) {
					// Our view may be stale and GC may have collected the
					// records after it: loadImage starts from the newest
					// snapshot, and still fails if the gap is real loss.
					img, err = v.pool.loadImage(ctx, v.desc, ^uint64(0))
				}
				if err != nil {
					return err
				}
				continue
			} else {
				err = rerr
			}
		}
		if err == nil {
			// If the log moved past our slot while we were slow (our view
			// was stale and GC collected the record that was there), a
			// snapshot at or beyond it exists: our fence is buried in
			// history and owns nothing. Start over from the newest state.
			snaps, _, lerr := v.pool.listSeqs(ctx, format.SnapPrefix(v.desc.ID))
			if lerr != nil {
				return lerr
			}
			if len(snaps) > 0 && snaps[len(snaps)-1] >= rec.Seq {
				v.log.Warn("fence landed in collected history; attaching again", "slot", rec.Seq, "newest_snapshot", snaps[len(snaps)-1])
				if img, err = v.pool.loadImage(ctx, v.desc, ^uint64(0)); err != nil {
					return err
				}
				continue
			}
			st, _, rerr := journal.Replay(img.st, rec)
			if rerr != nil {
				return rerr
			}
			img.st = st
			v.st = st
			v.lastTime = rec.Time
			v.m = img.m
			v.vols = img.vols
			v.size.Store(img.size) // replay may have gone on past a taken slot
			v.w = journal.NewWriter(rec.Epoch, id, rec.Seq)
			v.log.Info("attached read-write", "epoch", rec.Epoch, "fence_seq", rec.Seq, "writer", id.String())
			if img.sinceSnap >= v.opts.SnapshotEvery {
				v.mu.Lock()
				v.sinceSnap = 0
				v.startSnapshot(&snapCandidate{seq: rec.Seq, m: img.m.Clone(), vols: append([]string(nil), img.vols...), time: rec.Time, size: img.size})
				v.mu.Unlock()
			}
			return nil
		}
		if attempt >= 8 || ctx.Err() != nil {
			return fmt.Errorf("create fence record %d: %w", rec.Seq, err)
		}
		v.log.Warn("fence create failed; retrying", "seq", rec.Seq, "err", err)
		if !sleepCtx(ctx, backoff) {
			return ctx.Err()
		}
		backoff *= 2
	}
}

// newWriterID returns a random writer id: one per read-write attach, the
// first 16 bytes of every frame nonce that attach seals.
func newWriterID() (format.WriterID, error) {
	var id format.WriterID
	if _, err := rand.Read(id[:]); err != nil {
		return id, fmt.Errorf("generate writer id: %w", err)
	}
	return id, nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Desc returns the volume's descriptor.
func (v *Volume) Desc() *format.VolumeDesc { return v.desc }

// Size implements blockdev.Device.
func (v *Volume) Size() int64 { return int64(v.size.Load()) }

// BlockSize implements blockdev.Device.
func (v *Volume) BlockSize() int { return int(v.desc.BlockSize) }

// ReadOnly implements blockdev.Device.
func (v *Volume) ReadOnly() bool { return v.opts.ReadOnly }

// Epoch returns the writer's epoch (0 when read-only).
func (v *Volume) Epoch() uint64 {
	if v.w == nil {
		return v.st.Epoch
	}
	return v.w.Epoch()
}

// Fenced reports whether another writer took over.
func (v *Volume) Fenced() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.fenced
}

func (v *Volume) checkRange(off int64, n int) error {
	if off < 0 || n < 0 || off+int64(n) > v.Size() || off+int64(n) < off {
		return fmt.Errorf("%w: [%d, +%d) on a volume of %d bytes", blockdev.ErrOutOfRange, off, n, v.Size())
	}
	return nil
}

// usableLocked returns the error every call fails with, if any.
func (v *Volume) usableLocked() error {
	switch {
	case v.fenced:
		return blockdev.ErrFenced
	case v.fatal != nil:
		return v.fatal
	case v.closed:
		return blockdev.ErrClosed
	}
	return nil
}

// broadcastLocked wakes everyone waiting for progress.
func (v *Volume) broadcastLocked() {
	close(v.progress)
	v.progress = make(chan struct{})
}

// waitLocked releases mu until progress or ctx is done.
func (v *Volume) waitLocked(ctx context.Context) error {
	ch := v.progress
	v.mu.Unlock()
	defer v.mu.Lock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fenceLocked stops the writer for good.
func (v *Volume) fenceLocked(seq uint64, r *format.Record) {
	if !v.fenced {
		v.fenced = true
		v.log.Error("FENCED: another writer took over this volume; failing all further I/O, unflushed writes are lost",
			"slot", seq, "found_type", r.Type.String(), "found_epoch", r.Epoch, "our_epoch", v.w.Epoch())
	}
	v.broadcastLocked()
}

// failLocked records a fatal error (corruption in our own log).
func (v *Volume) failLocked(err error) {
	if v.fatal == nil {
		v.fatal = err
		v.log.Error("volume failed", "err", err)
	}
	v.broadcastLocked()
}

// Close flushes, writes a snapshot, and releases the volume. The Volume
// must not be used afterwards.
func (v *Volume) Close(ctx context.Context) error {
	var err error
	if v.w != nil {
		err = v.Flush(ctx)
	}
	v.mu.Lock()
	alreadyClosed := v.closed
	v.closed = true
	if err == nil && v.w != nil && !v.fenced && v.fatal == nil && v.w.Prefix() > v.lastSnap && v.open == nil && v.durableDone >= v.lastSealed {
		v.startSnapshot(&snapCandidate{seq: v.w.Prefix(), m: v.m.Clone(), vols: append([]string(nil), v.vols...), time: v.lastTime, size: uint64(v.Size())})
	}
	v.broadcastLocked()
	v.mu.Unlock()
	if alreadyClosed {
		return blockdev.ErrClosed
	}
	close(v.stop)
	if err != nil || v.w == nil {
		v.cancel() // fenced, failed or read-only: nothing left worth waiting for
	}
	v.wg.Wait()
	v.cancel()
	if errors.Is(err, blockdev.ErrFenced) {
		return err
	}
	if err != nil {
		return fmt.Errorf("close %s: %w", v.desc.Name, err)
	}
	return nil
}
