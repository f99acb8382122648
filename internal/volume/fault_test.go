package volume

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
)

// faultInjector decides, from a seeded generator, which store operations
// fail: a PutIfAbsent before it happens (nothing created) or after it
// happened (created, response lost), and reads (Get, GetRange, List, Stat)
// before they happen.
type faultInjector struct {
	on atomic.Bool

	mu  sync.Mutex
	rng *rand.Rand // guarded by mu

	putBefore, putLost, readFail float64 // probabilities

	nPutBefore, nPutLost, nRead atomic.Int64
}

func newFaultInjector(seed uint64) *faultInjector {
	return &faultInjector{rng: rand.New(rand.NewPCG(seed, 0xfa017)), putBefore: 0.10, putLost: 0.10, readFail: 0.04}
}

func (f *faultInjector) roll(p float64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rng.Float64() < p
}

func (f *faultInjector) hooks() faultstore.Hooks {
	return faultstore.Hooks{
		Before: func(op faultstore.Op, key string) error {
			if !f.on.Load() {
				return nil
			}
			switch op {
			case faultstore.OpPutIfAbsent:
				if f.roll(f.putBefore) {
					f.nPutBefore.Add(1)
					return faultstore.ErrInjected
				}
			case faultstore.OpGet, faultstore.OpGetRange, faultstore.OpList, faultstore.OpStat:
				if f.roll(f.readFail) {
					f.nRead.Add(1)
					return faultstore.ErrInjected
				}
			}
			return nil
		},
		After: func(op faultstore.Op, key string, err error) error {
			if f.on.Load() && op == faultstore.OpPutIfAbsent && err == nil && f.roll(f.putLost) {
				f.nPutLost.Add(1)
				return faultstore.ErrInjected
			}
			return nil
		},
	}
}

// TestModelWithFaults is the model test on mem:// and file:// stores that
// fail transiently and lose PutIfAbsent responses. Writes, trims, flushes
// and closes must succeed regardless (the engine retries); reads and
// attaches may fail with the injected error (the test retries them a
// bounded number of times) but must never return wrong data, and a failed
// attach must leave the volume fully usable. Everything acknowledged must
// read back exactly like the model, after every reattach and from a fresh
// attach without faults or cache at the end.
func TestModelWithFaults(t *testing.T) {
	ops := 800
	if s := os.Getenv("URLDISK_MODEL_OPS"); s != "" {
		ops, _ = strconv.Atoi(s)
	}
	for _, tc := range []struct{ name, url string }{
		{"mem", "mem://faults"},
		{"file", "file://" + t.TempDir()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			if s := os.Getenv("URLDISK_FAULT_SEED"); s != "" {
				seed, _ = strconv.ParseUint(s, 10, 64)
			}
			t.Logf("seed %d (replay with URLDISK_FAULT_SEED=%d; fault timing across goroutines still varies)", seed, seed)
			runFaultModel(t, tc.url, seed, ops)
		})
	}
}

func runFaultModel(t *testing.T, url string, seed uint64, nops int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	inner := openStore(t, url)
	cleanPool := initPool(t, inner)
	const size = 8 << 20
	const name = "faults"
	if _, err := cleanPool.Create(ctx, name, CreateOptions{Size: size}); err != nil {
		t.Fatal(err)
	}
	inj := newFaultInjector(seed)
	fstore := faultstore.New(inner, inj.hooks())
	inj.on.Store(true)

	var failedOpens, retriedReads int
	// retry runs f until it succeeds, allowing only injected failures.
	retry := func(what string, max int, counter *int, f func() error) {
		t.Helper()
		for attempt := 1; ; attempt++ {
			err := f()
			if err == nil {
				return
			}
			if !errors.Is(err, faultstore.ErrInjected) {
				t.Fatalf("%s failed with a non-injected error: %v", what, err)
			}
			*counter++
			if attempt == max {
				t.Fatalf("%s still failing after %d attempts: %v", what, max, err)
			}
		}
	}
	var pool *Pool
	retry("open pool", 50, &failedOpens, func() (err error) {
		pool, err = OpenPool(ctx, fstore, PoolOptions{Logger: testLogger(t)})
		return err
	})

	model := make([]byte, size)
	cacheDir := t.TempDir()
	var c *cache.Cache
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	attach := func() *Volume {
		t.Helper()
		if c != nil {
			c.Close()
			c = nil
		}
		o := Options{SegmentBytes: 64 << 10, BufferBytes: 512 << 10, Uploads: 4, SnapshotEvery: 8, IdleFlush: 5 * time.Millisecond, Logger: testLogger(t)}
		if rng.IntN(3) > 0 {
			if rng.IntN(2) == 0 {
				os.RemoveAll(cacheDir)
			}
			c = openCache(t, cacheDir, 1<<20)
			o.Cache = c
		}
		var v *Volume
		retry("attach", 50, &failedOpens, func() (err error) {
			v, err = pool.Open(ctx, name, o)
			return err
		})
		return v
	}
	read := func(v *Volume, p []byte, off int64) {
		t.Helper()
		retry(fmt.Sprintf("read [%d,+%d)", off, len(p)), 10, &retriedReads, func() error { return v.ReadAt(ctx, p, off) })
	}
	checkModel := func(v *Volume, who string) {
		t.Helper()
		got := make([]byte, size)
		read(v, got, 0)
		if !bytes.Equal(got, model) {
			t.Fatalf("%s: volume differs from model at byte %d", who, firstDiff(got, model))
		}
	}

	v := attach()
	randRange := func() (int64, int) {
		var n int
		switch rng.IntN(4) {
		case 0:
			n = 1 + rng.IntN(16)
		case 1:
			n = 4096 * (1 + rng.IntN(4))
		case 2:
			n = 1 + rng.IntN(70000)
		default:
			n = 1 + rng.IntN(300000)
		}
		off := int64(rng.IntN(size - n + 1))
		if rng.IntN(2) == 0 {
			off &^= 4095
		}
		return off, n
	}
	buf := make([]byte, 300000)
	reattaches := 0
	for i := 0; i < nops; i++ {
		switch op := rng.IntN(20); {
		case op < 8:
			off, n := randRange()
			p := make([]byte, n)
			if rng.IntN(6) > 0 {
				for j := range p {
					p[j] = byte(rng.Uint32())
				}
			}
			if err := v.WriteAt(ctx, p, off); err != nil {
				t.Fatalf("op %d write: %v", i, err)
			}
			copy(model[off:], p)
		case op < 10:
			off, n := randRange()
			var err error
			if op == 8 {
				err = v.Trim(ctx, off, int64(n))
			} else {
				err = v.WriteZeroes(ctx, off, int64(n))
			}
			if err != nil {
				t.Fatalf("op %d zero: %v", i, err)
			}
			clear(model[off : off+int64(n)])
		case op < 11:
			if err := v.Flush(ctx); err != nil {
				t.Fatalf("op %d flush: %v", i, err)
			}
		case op < 12 && rng.IntN(6) == 0:
			if err := v.Close(ctx); err != nil {
				t.Fatalf("op %d close: %v", i, err)
			}
			v = attach()
			reattaches++
			checkModel(v, fmt.Sprintf("op %d, after reattach", i))
		default:
			off, n := randRange()
			p := buf[:n]
			read(v, p, off)
			if !bytes.Equal(p, model[off:off+int64(n)]) {
				t.Fatalf("op %d: read [%d,+%d) differs from model at byte %d", i, off, n, firstDiff(p, model[off:]))
			}
		}
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// A read-only attach under faults, then fresh attaches without any.
	ro := func() *Volume {
		var v *Volume
		retry("read-only attach", 50, &failedOpens, func() (err error) {
			v, err = pool.Open(ctx, name, Options{ReadOnly: true, Logger: testLogger(t)})
			return err
		})
		return v
	}()
	checkModel(ro, "read-only attach under faults")
	ro.Close(ctx)
	inj.on.Store(false)
	for _, readOnly := range []bool{true, false} {
		v, err := cleanPool.Open(ctx, name, Options{ReadOnly: readOnly, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		checkModel(v, fmt.Sprintf("fresh attach without faults (read-only %v)", readOnly))
		if err := v.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d ops, %d reattaches; injected: %d PutIfAbsent failures, %d lost PutIfAbsent responses, %d read failures; %d failed attaches retried, %d reads retried",
		nops, reattaches, inj.nPutBefore.Load(), inj.nPutLost.Load(), inj.nRead.Load(), failedOpens, retriedReads)
	if inj.nPutBefore.Load() == 0 || inj.nPutLost.Load() == 0 || inj.nRead.Load() == 0 {
		t.Fatal("some kind of fault was never injected: the test checked too little")
	}
}

// zombieRecord encodes a data record of a fenced writer (a random writer id
// at epoch) for slot seq of volume id, writing each region's byte.
func zombieRecord(t *testing.T, id string, seq, epoch uint64, regions []region) []byte {
	t.Helper()
	b := format.NewBuilder(0)
	var exts []format.Extent
	for _, r := range regions {
		d := b.Append(bytes.Repeat([]byte{r.b}, int(r.n)))
		exts = append(exts, format.Extent{Off: uint64(r.off), Len: uint64(r.n), DataOff: d})
	}
	var w format.WriterID
	if _, err := crand.Read(w[:]); err != nil {
		t.Fatal(err)
	}
	rec := &format.Record{Type: format.RecordData, Seq: seq, Epoch: epoch, Writer: w, Time: time.Now().UnixNano(), Volume: id, Extents: exts}
	obj, err := format.EncodeRecord(rec, b)
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

// TestZombieLeftoverSkipped places, with the raw store, a data record of an
// older epoch (a zombie writer's leftover) in the slot right after the log
// head, before the writer's next upload. The writer must skip it (journal
// Skip, segments moved to later slots) and acknowledge its flush, the
// zombie's bytes must never show, and everything must read back the same
// after reattaching without a cache. "pipelined": three overlapping
// segments are in flight when the zombie appears, so all three move and
// their original uploads may land too; replay must still apply them in
// order. "pipelined-open": a fourth, open segment moves with them.
// "...-encrypted": the same on an encrypted volume, whose moved records are
// sealed again for their new slots (the frames' additional data names the
// seq), or they would not open after the move.
func TestZombieLeftoverSkipped(t *testing.T) {
	for _, backend := range []struct{ name, url string }{
		{"mem", "mem://zombie"},
		{"file", "file://" + t.TempDir()},
	} {
		for _, mode := range []string{"single", "pipelined", "pipelined-open", "single-encrypted", "pipelined-open-encrypted", "single-compressed", "pipelined-open-compressed", "pipelined-open-compressed-encrypted"} {
			t.Run(backend.name+"/"+mode, func(t *testing.T) {
				url := backend.url
				if backend.name == "mem" {
					url += mode
				} else {
					url += "/" + mode
				}
				runZombie(t, url, strings.HasPrefix(mode, "pipelined"), strings.HasPrefix(mode, "pipelined-open"), strings.HasSuffix(mode, "-encrypted"), strings.Contains(mode, "-compressed"))
			})
		}
	}
}

// openSeg (with pipelined): a fourth segment is still open when the zombie
// is found, so it moves too and its old slot, which nothing was uploaded to,
// must be filled for the flush to complete. compressed: the moved records
// are packed, and packed again for their new slots (their frame tables
// follow them).
func runZombie(t *testing.T, url string, pipelined, openSeg, encrypted, compressed bool) {
	ctx := context.Background()
	const size = 4 << 20
	inner := openStore(t, url)
	cleanPool := initPool(t, inner)
	var keys KeySource
	if encrypted {
		kek := kekOf(t, 5)
		keys = func(context.Context) (*format.KEK, error) { return kek, nil }
		cleanPool.keys = keys
	}
	co := CreateOptions{Size: size, Encrypt: encrypted}
	if compressed {
		co.Compression = format.CompressLZ4
	}
	desc, err := cleanPool.Create(ctx, "zombie", co)
	if err != nil {
		t.Fatal(err)
	}
	// A first attach, so that an older epoch exists.
	v0, err := cleanPool.Open(ctx, "zombie", Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	oldEpoch := v0.Epoch()
	if err := v0.Close(ctx); err != nil {
		t.Fatal(err)
	}

	var g gate
	pool := gatedLogPool(t, inner, &g, nil)
	pool.keys = keys
	w, err := pool.Open(ctx, "zombie", Options{SegmentBytes: 64 << 10, Uploads: 8, IdleFlush: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if w.Epoch() <= oldEpoch {
		t.Fatalf("writer epoch %d not after %d", w.Epoch(), oldEpoch)
	}
	model := make([]byte, size)
	write := func(off, n int64, b byte) {
		t.Helper()
		p := bytes.Repeat([]byte{b}, int(n))
		if err := w.WriteAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
	}
	write(512<<10, 64<<10, 0x44)
	write(2<<20+100, 3000, 0x45)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	next := w.w.Next()
	w.mu.Unlock()
	if _, err := inner.Stat(ctx, format.LogKey(desc.ID, next)); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("slot %d after the head is not free: %v", next, err)
	}

	if pipelined {
		g.close()
		write(0, 64<<10, 0x11)      // segment 1: slot next
		write(32<<10, 64<<10, 0x22) // segment 2: slot next+1
		write(16<<10, 64<<10, 0x33) // segment 3: slot next+2
		g.waitHeld(t, 3)
		if openSeg {
			write(3<<20, 4096, 0x55) // segment 4, open: slot next+3
		}
	} else {
		write(32<<10, 16<<10, 0x22) // one open segment, slot next
		write(1<<20+2048, 1000, 0x33)
	}
	zombie := zombieRecord(t, desc.ID, next, oldEpoch, []region{{0, 128 << 10, 0xee}, {1 << 20, 4096, 0xee}, {3 << 20, 8192, 0xee}})
	if err := inner.PutIfAbsent(ctx, format.LogKey(desc.ID, next), zombie); err != nil {
		t.Fatal(err)
	}
	g.open()
	if openSeg {
		// Let the move happen while segment 4 is still open (before Flush
		// would seal it).
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
			w.mu.Lock()
			moved, open := w.moves > 0, w.open != nil
			w.mu.Unlock()
			if moved {
				if !open {
					t.Fatal("segment 4 was sealed before the move")
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no move within 30s")
			}
		}
	}
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.Flush(fctx); err != nil {
		t.Fatalf("flush with a zombie record in slot %d: %v", next, err)
	}
	w.mu.Lock()
	moves := w.moves
	w.mu.Unlock()
	if moves == 0 {
		t.Fatalf("the writer never moved past the zombie record in slot %d", next)
	}
	if got, err := inner.Get(ctx, format.LogKey(desc.ID, next)); err != nil || !bytes.Equal(got, zombie) {
		t.Fatalf("zombie record in slot %d changed (err %v)", next, err)
	}
	// The writer's first segment now lives after all the slots it had.
	r := readRawRecord(t, inner, format.LogKey(desc.ID, next+1))
	if r.Epoch != w.Epoch() || r.Writer != w.w.ID() {
		t.Fatalf("slot %d holds epoch %d, want the writer's record of epoch %d", next+1, r.Epoch, w.Epoch())
	}
	check := func(v *Volume, who string) {
		t.Helper()
		if got := readAll(t, v); !bytes.Equal(got, model) {
			t.Fatalf("%s: volume differs from the model at byte %d (got %#x, want %#x)", who, firstDiff(got, model), got[firstDiff(got, model)], model[firstDiff(got, model)])
		}
	}
	check(w, "writer")
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{true, false} {
		v, err := cleanPool.Open(ctx, "zombie", Options{ReadOnly: ro, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		check(v, fmt.Sprintf("reattach (read-only %v)", ro))
		if err := v.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("zombie in slot %d; writer moved %d times", next, moves)
}

// TestCorruptRecordDetected flips one byte of a record on disk (file://,
// where objects are plain files) and checks that corrupt data is never
// served: a flipped data or frame-header byte makes reads of that chunk
// fail with format.ErrCorrupt (other chunks still read correctly, without
// a cache to hide the damage); a flipped trailer or footer byte makes
// attach fail with format.ErrCorrupt once no snapshot covers the record.
func TestCorruptRecordDetected(t *testing.T) {
	cases := []struct {
		name string
		// pos returns the byte to flip, given the record's data length.
		pos         func(dataLen uint64, size int64) int64
		inTrailer   bool
		badChunkOff int64 // a volume offset inside the damaged chunk
	}{
		{"data", func(uint64, int64) int64 { return format.FramePos(1) + format.FrameHeader + 100 }, false, 64<<10 + 100},
		{"frame-crc", func(uint64, int64) int64 { return format.FramePos(2) + 5 }, false, 128<<10 + 7},
		{"frame-length", func(uint64, int64) int64 { return format.FramePos(3) + 1 }, false, 3 << 16},
		{"trailer", func(n uint64, _ int64) int64 { return int64(format.DataSectionSize(n)) + 13 }, true, 0},
		{"footer", func(_ uint64, size int64) int64 { return size - 1 }, true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			pool := initPool(t, openStore(t, "file://"+dir))
			desc, err := pool.Create(ctx, "corrupt", CreateOptions{Size: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			v, err := pool.Open(ctx, "corrupt", Options{IdleFlush: -1, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			data := make([]byte, 256<<10)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range data {
				data[i] = byte(rng.Uint32() | 1)
			}
			if err := v.WriteAt(ctx, data, 0); err != nil {
				t.Fatal(err)
			}
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			seq := v.w.Prefix() // the data record: one segment, just flushed
			if err := v.Close(ctx); err != nil {
				t.Fatal(err)
			}
			key := format.LogKey(desc.ID, seq)
			r := readRawRecord(t, pool.Store(), key)
			if r.Type != format.RecordData || r.DataLen != uint64(len(data)) {
				t.Fatalf("record %d: %v with %d data bytes, want the data record", seq, r.Type, r.DataLen)
			}
			path := dir + "/" + key
			st, err := os.Stat(path)
			if err != nil {
				t.Fatalf("record file: %v", err)
			}
			pos := tc.pos(r.DataLen, st.Size())
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, pos); err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0x40
			if _, err := f.WriteAt(b, pos); err != nil {
				t.Fatal(err)
			}
			f.Close()

			if tc.inTrailer {
				// Attach reads trailers only after the newest snapshot.
				if err := os.RemoveAll(dir + "/" + format.SnapPrefix(desc.ID)); err != nil {
					t.Fatal(err)
				}
				for _, ro := range []bool{true, false} {
					v, err := pool.Open(ctx, "corrupt", Options{ReadOnly: ro, Logger: testLogger(t)})
					if err == nil {
						v.Close(ctx)
						t.Fatalf("attach (read-only %v) with a corrupt trailer in record %d succeeded", ro, seq)
					}
					if !errors.Is(err, format.ErrCorrupt) {
						t.Fatalf("attach (read-only %v) with a corrupt trailer: %v, want ErrCorrupt", ro, err)
					}
					t.Logf("attach (read-only %v): %v", ro, err)
				}
				if _, err := pool.Store().Stat(ctx, format.LogKey(desc.ID, seq+1)); !errors.Is(err, objstore.ErrNotFound) {
					t.Fatalf("a failed read-write attach left a record at %d: %v", seq+1, err)
				}
				return
			}
			for _, ro := range []bool{true, false} {
				v, err := pool.Open(ctx, "corrupt", Options{ReadOnly: ro, Logger: testLogger(t)})
				if err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(data))
				err = v.ReadAt(ctx, got, 0)
				if !errors.Is(err, format.ErrCorrupt) {
					t.Fatalf("read over the corrupt chunk (read-only %v): %v, want ErrCorrupt", ro, err)
				}
				p := make([]byte, 100)
				if err := v.ReadAt(ctx, p, tc.badChunkOff); !errors.Is(err, format.ErrCorrupt) {
					t.Fatalf("small read inside the corrupt chunk (read-only %v): %v, want ErrCorrupt", ro, err)
				}
				// The other chunks are intact and still served.
				for _, c := range []int64{0, 3} {
					if c<<16 <= tc.badChunkOff && tc.badChunkOff < (c+1)<<16 {
						continue
					}
					p := make([]byte, 64<<10)
					if err := v.ReadAt(ctx, p, c<<16); err != nil || !bytes.Equal(p, data[c<<16:(c+1)<<16]) {
						t.Fatalf("intact chunk %d (read-only %v): err %v, equal %v", c, ro, err, bytes.Equal(p, data[c<<16:(c+1)<<16]))
					}
				}
				if err := v.Close(ctx); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
