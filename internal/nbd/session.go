package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/urldisk/urldisk/internal/blockdev"
)

// session is the transmission phase of one connection.
//
// One reader goroutine parses requests, validates them with checkRequest,
// reads WRITE payloads into pooled buffers and hands each request to a
// worker. Workers (at most MaxInFlight, started on demand) call the device
// and send the reply; replies go out in completion order, serialized by the
// replyWriter.
//
// Inline execution: handing a request to a worker costs more than a small
// device call that hits a cache (the worker's wake-up usually wakes another
// thread too, and it lies on the request's critical path). A client that
// waits for each reply before sending its next request (queue depth 1) gets
// nothing from the hand-off, so for such a client the reader executes small
// requests itself. It counts as one when inlineStreak requests in a row
// arrived with nothing else in flight or buffered, and the current one also
// arrived after the client had read every reply sent so far (sendQueue).
// The last test keeps deeper queues on the worker path even when the server
// is fast enough to finish each request before the next arrives: there the
// delay of the hand-off lets requests and replies batch, which costs the
// client fewer wake-ups than one exchange per request (fio at queue depth
// 32 made 1.5-2x fewer IOPS when its requests were executed inline).
//
// An inline device call might block for long, though (a cache miss), and
// meanwhile nobody reads the requests a client sends. A watchdog (a timer
// ticking every inlineWatchPeriod while inline calls happen) therefore
// takes the reader role away from a goroutine whose inline call has lasted
// a whole period: it starts a new reader goroutine, and the old one
// finishes its request and exits. Inline execution then pauses for the
// next inlineCooldown requests, so a slow device is served as before at
// the cost of a delay of about two periods now and then.
//
// Memory per connection is bounded by MaxInFlight request slots and by the
// MaxBufferBytes budget charged for every payload buffer before it is taken
// from the pool.
type session struct {
	c   *conn
	ctx context.Context
	exp *exportEntry
	// waitCtx ends the reader's waits for buffer budget when replies can
	// no longer be sent: a blocked reader would otherwise go on taking
	// budget for requests nobody will read the answer to.
	waitCtx    context.Context
	cancelWait context.CancelFunc
	dev        blockdev.Device
	lim        limits
	pool       *bufPool
	r          *bufio.Reader
	w          *replyWriter
	stats      *errorStats

	// Reader-owned (passed on with the reader role on a takeover):
	hdr         [requestHeaderLen]byte
	seq         uint64 // sequence number of the last request read
	nworkers    int
	sendq       sendQueue
	idleStreak  int    // requests in a row that found the connection idle, up to inlineStreak
	noInlineFor int    // requests to dispatch before executing inline again
	inlineN     uint64 // inline calls started

	active   atomic.Int32  // requests dispatched and not yet done with the device (incl. inline)
	inline   atomic.Uint64 // inlineN<<2 | inlineIdle, inlineBusy or inlineTaken
	readDone chan error    // the result of a read loop that was taken over
	watch    inlineWatch

	slots   chan int // free request slots; a request holds one until replied
	budget  *semaphore.Weighted
	work    chan job // unbuffered: a send means a worker took the job
	workers sync.WaitGroup
	pending sync.WaitGroup // requests dispatched and not yet replied
	writes  writeTracker
}

// errConnClosed stops the reader when the connection was closed hard.
var errConnClosed = errors.New("connection closed")

// errTakenOver ends the read loop of a goroutine that lost the reader role
// to the watchdog while executing a request inline.
var errTakenOver = errors.New("reader role taken over")

// Inline execution (see session).
const (
	inlineMaxLen      = 128 << 10        // largest READ or WRITE executed inline
	inlineWatchPeriod = time.Millisecond // watchdog tick
	inlineStreak      = 8                // idle arrivals in a row before executing inline
	inlineCooldown    = 1024             // requests dispatched after a takeover
	inlineIdle        = 0                // the reader is not executing a request
	inlineBusy        = 1                // the reader is executing a request inline
	inlineTaken       = 2                // the watchdog started another reader
)

// job is one request handed to a worker.
type job struct {
	req    request
	slot   int
	seq    uint64
	buf    *[]byte // READ destination or WRITE payload; nil when Length == 0
	charge int64   // bytes of budget held for buf
}

func newSession(c *conn, e *exportEntry, nc net.Conn, r *bufio.Reader) *session {
	opts := &c.srv.opts
	s := &session{
		c:    c,
		ctx:  c.ctx,
		exp:  e,
		dev:  e.Device,
		pool: c.srv.pool,
		lim: limits{
			Size:       e.Device.Size(),
			MaxPayload: uint32(opts.MaxPayload),
			ReadOnly:   e.Device.ReadOnly(),
		},
		r:        r,
		stats:    &errorStats{log: c.log},
		slots:    make(chan int, opts.MaxInFlight),
		budget:   semaphore.NewWeighted(opts.MaxBufferBytes),
		work:     make(chan job),
		readDone: make(chan error, 1),
	}
	s.sendq.init(c.raw)
	s.watch.t = time.AfterFunc(time.Hour, s.watchInline)
	s.watch.t.Stop()
	s.waitCtx, s.cancelWait = context.WithCancel(c.ctx)
	s.w = newReplyWriter(nc, c.raw, opts.ReplyTimeout, func() {
		c.raw.Close()
		s.cancelWait()
	})
	for i := range opts.MaxInFlight {
		s.slots <- i
	}
	s.writes.init(opts.MaxInFlight)
	return s
}

// run serves requests until the client disconnects, the connection is
// drained or closed, or the client breaks the protocol. It waits for all
// dispatched requests to be answered before returning.
func (s *session) run() error {
	err := s.readLoop()
	if err == errTakenOver {
		err = <-s.readDone
	}
	s.watch.stop()
	defer s.cancelWait()
	if err != nil {
		// The client may have stopped reading; do not let replies to the
		// requests still in flight block for a whole ReplyTimeout.
		s.w.setTimeout(min(s.c.srv.opts.HandshakeTimeout, s.c.srv.opts.ReplyTimeout))
	}
	s.pending.Wait()
	close(s.work)
	s.workers.Wait()
	if ferr := s.w.flush(); ferr != nil && err == nil && s.ctx.Err() == nil {
		err = fmt.Errorf("flush replies: %w", ferr)
	}
	s.stats.summary()
	return err
}

// readLoop reads and dispatches requests. A nil result is a clean end.
func (s *session) readLoop() error {
	for {
		if _, err := io.ReadFull(s.r, s.hdr[:]); err != nil {
			return s.readError(err, false)
		}
		req, err := parseRequest(s.hdr[:])
		if err != nil {
			s.c.log.Warn("nbd: protocol violation; closing", "err", err)
			return err
		}
		v := checkRequest(req, s.lim)
		if v.Disconnect {
			s.c.log.Debug("nbd: client disconnected")
			return nil
		}
		if v.Errno != 0 {
			if v.Payload > 0 {
				if _, err := s.r.Discard(int(v.Payload)); err != nil {
					return s.readError(err, true)
				}
			}
			s.stats.rejected(req, v.Errno)
			s.w.reply(req.Handle, v.Errno, nil)
			if v.Hangup {
				return fmt.Errorf("unrecoverable request (type %d, length %d)", req.Type, req.Length)
			}
			continue
		}
		if err := s.dispatch(req); err != nil {
			if errors.Is(err, errConnClosed) {
				return nil
			}
			return err
		}
	}
}

// dispatch acquires a slot and buffer for a valid request, reads its payload
// and hands it to a worker.
func (s *session) dispatch(req request) error {
	var j job
	select {
	case j.slot = <-s.slots:
	case <-s.ctx.Done():
		return errConnClosed
	}
	j.req = req
	if (req.Type == cmdRead || req.Type == cmdWrite) && req.Length > 0 {
		n := int(req.Length)
		j.charge = int64(classSize(n))
		if err := s.budget.Acquire(s.waitCtx, j.charge); err != nil {
			s.slots <- j.slot
			return errConnClosed
		}
		// Then the server-wide bound: waiting here stops this reader,
		// which is the back-pressure on a client asking for more than
		// its share while others hold buffers.
		if err := s.c.srv.acquireQueued(s.waitCtx, j.charge); err != nil {
			s.budget.Release(j.charge)
			s.slots <- j.slot
			return errConnClosed
		}
		j.buf = s.pool.get(n)
		if req.Type == cmdWrite {
			if _, err := io.ReadFull(s.r, *j.buf); err != nil {
				s.release(j)
				return s.readError(err, true)
			}
		}
	}
	s.seq++
	j.seq = s.seq
	if isWriteCmd(req.Type) {
		s.writes.start(j.slot, j.seq)
	}
	s.pending.Add(1)
	if s.active.Add(1) == 1 && s.r.Buffered() == 0 {
		// Nothing else in flight or buffered: the client may be
		// waiting for each reply before it sends the next request.
		s.idleStreak = min(s.idleStreak+1, inlineStreak)
		if s.idleStreak == inlineStreak && req.Length <= inlineMaxLen && s.sendq.empty() {
			if s.noInlineFor == 0 {
				return s.handleInline(j)
			}
			s.noInlineFor--
		}
	} else {
		s.idleStreak = 0
	}
	select {
	case s.work <- j:
		return nil
	default:
	}
	if s.nworkers < cap(s.slots) {
		s.nworkers++
		s.workers.Add(1)
		go s.worker(j)
		return nil
	}
	// Every worker is busy or about to receive: one holding a slot's worth
	// of work finishes soon, since a worker only waits for earlier writes,
	// which all have their own worker (or run inline on a former reader).
	s.work <- j
	return nil
}

// readError classifies a read failure: EOF between requests, a drain, or a
// cancelled connection are clean ends; anything else is an error.
func (s *session) readError(err error, midRequest bool) error {
	switch {
	case s.ctx.Err() != nil:
		return nil
	case s.c.draining() && errors.Is(err, os.ErrDeadlineExceeded):
		s.c.log.Debug("nbd: connection drained")
		return nil
	case !midRequest && errors.Is(err, io.EOF):
		s.c.log.Debug("nbd: client closed the connection without NBD_CMD_DISC")
		return nil
	case midRequest && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		return fmt.Errorf("client disconnected mid-request: %w", io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("read request: %w", err)
}

// handleInline executes j on the reader goroutine under the watchdog's
// eye. It returns errTakenOver if another goroutine became the reader
// meanwhile; the caller must then stop reading.
func (s *session) handleInline(j job) error {
	s.inlineN++
	n := s.inlineN // s.inlineN belongs to the next reader once handle starts
	s.inline.Store(n<<2 | inlineBusy)
	s.watch.arm()
	s.handle(j)
	if s.inline.CompareAndSwap(n<<2|inlineBusy, n<<2|inlineIdle) {
		return nil
	}
	return errTakenOver
}

// watchInline is the watchdog tick (a timer callback). If the same inline
// call is still running since the previous tick, it hands the reader role
// to a new goroutine. It keeps ticking while inline calls happen.
func (s *session) watchInline() {
	w := &s.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	v := s.inline.Load()
	n := v >> 2
	if n == w.lastN && v&3 == inlineBusy && s.inline.CompareAndSwap(v, n<<2|inlineTaken) {
		go s.takeOver()
	}
	if n == w.lastN {
		// No inline call started during a whole period: stop ticking,
		// unless one started just now (arm checks armed after
		// publishing its call, we check for calls after clearing armed).
		w.armed.Store(false)
		if s.inline.Load()>>2 == n || !w.armed.CompareAndSwap(false, true) {
			return
		}
	}
	w.lastN = n
	w.t.Reset(inlineWatchPeriod)
}

// takeOver continues the read loop of a reader stuck in an inline call.
// The reader-owned fields were handed over with the inline state (the
// stuck reader published them before its inline call and does not touch
// them again).
func (s *session) takeOver() {
	s.noInlineFor = inlineCooldown
	if err := s.readLoop(); err != errTakenOver {
		s.readDone <- err
	}
}

// inlineWatch is the watchdog's timer and state.
type inlineWatch struct {
	t     *time.Timer
	armed atomic.Bool // the timer is ticking
	mu    sync.Mutex
	// Guarded by mu:
	lastN   uint64 // inline call count at the previous tick
	stopped bool
}

// arm starts the ticks if they are not running.
func (w *inlineWatch) arm() {
	if !w.armed.Load() && w.armed.CompareAndSwap(false, true) {
		w.t.Reset(inlineWatchPeriod)
	}
}

// stop ends the ticks for good.
func (w *inlineWatch) stop() {
	w.mu.Lock()
	w.stopped = true
	w.t.Stop()
	w.mu.Unlock()
}

func (s *session) worker(first job) {
	defer s.workers.Done()
	s.handle(first)
	for j := range s.work {
		s.handle(j)
	}
}

// handle executes one request on the device and replies.
func (s *session) handle(j job) {
	req := j.req
	off := int64(req.Offset) // checkRequest ensured Offset <= Size
	n := int64(req.Length)
	fua := req.Flags&cmdFlagFUA != 0
	var err error
	var data []byte
	switch req.Type {
	case cmdRead:
		if n > 0 {
			data = *j.buf
			err = s.dev.ReadAt(s.ctx, data, off)
		}
	case cmdWrite:
		if n > 0 {
			err = s.dev.WriteAt(s.ctx, *j.buf, off)
		}
		err = s.fua(err, fua)
	case cmdTrim:
		if n > 0 {
			err = s.dev.Trim(s.ctx, off, n)
		}
		err = s.fua(err, fua)
	case cmdWriteZeroes:
		if n > 0 {
			err = s.dev.WriteZeroes(s.ctx, off, n)
		}
		err = s.fua(err, fua)
	case cmdFlush:
		// Writes received before this FLUSH must have completed first.
		s.writes.waitBefore(j.seq)
		err = s.dev.Flush(s.ctx)
	}
	var errno uint32
	if err != nil {
		errno = s.stats.failed(req, err)
		data = nil
		if errno == errShutdown && errors.Is(err, blockdev.ErrFenced) {
			s.c.srv.markFenced(s.exp)
		}
	}
	// Before the reply: a client waiting for it then finds the connection
	// idle when it sends its next request.
	s.active.Add(-1)
	s.w.reply(req.Handle, errno, data)
	if isWriteCmd(req.Type) {
		// Only now: a FLUSH waiting for this write must reply after it.
		s.writes.finish(j.slot)
	}
	s.release(j)
	s.pending.Done()
}

// fua flushes after a successful write when the client asked for FUA.
func (s *session) fua(err error, fua bool) error {
	if err != nil || !fua {
		return err
	}
	return s.dev.Flush(s.ctx)
}

// release returns a job's buffer, budget and slot.
func (s *session) release(j job) {
	if j.buf != nil {
		s.pool.put(j.buf)
		s.budget.Release(j.charge)
		s.c.srv.releaseQueued(j.charge)
	}
	s.slots <- j.slot
}

// replyWriter serializes replies. Concurrent repliers coalesce: a reply is
// flushed to the socket only when no other reply is waiting for the lock,
// the last one in line flushes for all.
type replyWriter struct {
	waiting atomic.Int32 // repliers blocked on mu
	onErr   func()       // closes the connection after a write error
	raw     net.Conn     // the socket, for write deadlines

	mu sync.Mutex
	// Guarded by mu:
	bw      *bufio.Writer
	hdr     [simpleReplyLen]byte
	err     error         // sticky write error
	timeout time.Duration // how long one socket write may block
	armedAt time.Time     // when the write deadline was last set
}

func newReplyWriter(w io.Writer, raw net.Conn, timeout time.Duration, onErr func()) *replyWriter {
	return &replyWriter{bw: bufio.NewWriterSize(w, replyBufSize), raw: raw, timeout: timeout, onErr: onErr}
}

// setTimeout changes how long a blocked write may last, from now on.
func (w *replyWriter) setTimeout(d time.Duration) {
	w.mu.Lock()
	w.timeout = d
	w.armedAt = time.Time{}
	w.mu.Unlock()
	// Also for a write blocked now (it holds mu).
	w.raw.SetWriteDeadline(time.Now().Add(d))
}

// arm sets the write deadline before the socket is written. A client
// that stops reading replies otherwise holds its buffers (and its share
// of the server-wide MaxQueuedBytes) forever. Setting a deadline costs
// about ten times reading the clock, so a deadline set less than an
// eighth of the timeout ago is kept: a blocked write is then cut after
// between 7/8 of the timeout and all of it. Caller holds mu.
func (w *replyWriter) arm() {
	now := time.Now()
	if now.Sub(w.armedAt) < w.timeout/8 {
		return
	}
	w.armedAt = now
	w.raw.SetWriteDeadline(now.Add(w.timeout))
}

// reply sends a simple reply with optional data (a successful READ).
func (w *replyWriter) reply(handle uint64, errno uint32, data []byte) {
	w.waiting.Add(1)
	w.mu.Lock()
	w.waiting.Add(-1)
	defer w.mu.Unlock()
	if w.err != nil {
		return
	}
	putSimpleReply(w.hdr[:], errno, handle)
	if w.bw.Available() < simpleReplyLen+len(data) {
		w.arm() // bufio writes through to the socket
	}
	_, err := w.bw.Write(w.hdr[:])
	if err == nil && len(data) > 0 {
		_, err = w.bw.Write(data)
	}
	if err == nil && w.waiting.Load() == 0 {
		w.arm()
		err = w.bw.Flush()
	}
	if err != nil {
		w.err = err
		w.onErr()
	}
}

// flush writes out anything buffered.
func (w *replyWriter) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	w.arm()
	w.err = w.bw.Flush()
	return w.err
}

// writeTracker lets a FLUSH wait for the writes received before it.
// Each in-flight write records its request sequence number in its slot.
type writeTracker struct {
	mu   sync.Mutex
	cond sync.Cond
	// Guarded by mu:
	seqs    []uint64 // by slot: sequence of the write in flight there, 0 if none
	waiters int      // FLUSHes waiting in waitBefore
}

func (t *writeTracker) init(slots int) {
	t.seqs = make([]uint64, slots)
	t.cond.L = &t.mu
}

// start records that the write with sequence seq occupies slot.
func (t *writeTracker) start(slot int, seq uint64) {
	t.mu.Lock()
	t.seqs[slot] = seq
	t.mu.Unlock()
}

// finish records that the write in slot has completed.
func (t *writeTracker) finish(slot int) {
	t.mu.Lock()
	t.seqs[slot] = 0
	if t.waiters > 0 {
		t.cond.Broadcast()
	}
	t.mu.Unlock()
}

// waitBefore blocks until no write with a sequence below seq is in flight.
func (t *writeTracker) waitBefore(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.waiters++
	for t.anyBefore(seq) {
		t.cond.Wait()
	}
	t.waiters--
}

func (t *writeTracker) anyBefore(seq uint64) bool {
	for _, s := range t.seqs {
		if s != 0 && s < seq {
			return true
		}
	}
	return false
}
