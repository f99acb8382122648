package volume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volref"
)

// Clock tells the time and paces the volume's background loops; injected
// so tests control both.
type Clock interface {
	Now() time.Time
	// NewTicker is time.NewTicker on this clock.
	NewTicker(d time.Duration) Ticker
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// Pool is an object-store prefix holding volumes. Safe for concurrent use.
type Pool struct {
	store objstore.Store
	// ownStore: the pool opened the store from a URL and closes it.
	ownStore  bool
	marker    format.PoolMarker
	clock     Clock
	log       *slog.Logger
	retention time.Duration
	// keys is where the key-encryption key comes from (nil: none);
	// key caches it once loaded (guarded by keyMu).
	keys  KeySource
	keyMu sync.Mutex
	key   *format.KEK
	// frames: the frame tables of packed records (compressed volumes).
	frames *frameTables
	// fetch recycles the read path's GET buffers across the pool's volumes.
	fetch *fetchBufs
}

// DefaultRetention is the default point-in-time window.
const DefaultRetention = 24 * time.Hour

// PoolOptions configures a Pool. The zero value uses the wall clock and
// slog.Default().
type PoolOptions struct {
	Clock  Clock
	Logger *slog.Logger
	// Retention is the point-in-time window: points (seq or time) older
	// than Retention minus one hour cannot be opened, cloned or restored,
	// so a concurrent GC with the same retention never races them.
	// Default 24h. Checkpoints are always available.
	Retention time.Duration
	// Key supplies the key-encryption key of encrypted volumes (create
	// --encrypt, and every open, clone and rekey of one). Nil: no key;
	// unencrypted volumes need none.
	Key KeySource
}

func (o PoolOptions) withDefaults() PoolOptions {
	if o.Clock == nil {
		o.Clock = wallClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	return o
}

// InitPool makes store a pool: it probes whether the store honours
// create-if-absent and writes the pool marker. Initialising an existing pool
// returns it unchanged.
func InitPool(ctx context.Context, store objstore.Store, opts PoolOptions) (*Pool, error) {
	opts = opts.withDefaults()
	if p, err := OpenPool(ctx, store, opts); err == nil {
		return p, nil
	} else if !errors.Is(err, ErrNoPool) {
		return nil, err
	}
	cond, err := objstore.Probe(ctx, store)
	if err != nil {
		return nil, fmt.Errorf("init pool: probe store: %w", err)
	}
	m := format.PoolMarker{Created: opts.Clock.Now().UTC(), ConditionalCreate: cond}
	b, err := format.EncodeDoc(format.KindPool, &m)
	if err != nil {
		return nil, err
	}
	if err := store.PutIfAbsent(ctx, format.PoolMarkerKey, b); err != nil && !errors.Is(err, objstore.ErrExists) {
		return nil, fmt.Errorf("init pool: write marker: %w", err)
	}
	if !cond {
		opts.Logger.Warn("object store does not honour conditional create: pool initialised read-only; writers and new volumes will be refused",
			"store", objstore.Describe(ctx, store))
	}
	return OpenPool(ctx, store, opts)
}

// OpenPool opens an initialised pool; ErrNoPool if the marker is missing.
func OpenPool(ctx context.Context, store objstore.Store, opts PoolOptions) (*Pool, error) {
	opts = opts.withDefaults()
	p := &Pool{store: store, clock: opts.Clock, log: opts.Logger, retention: opts.Retention, keys: opts.Key, frames: newFrameTables(), fetch: newFetchBufs()}
	switch err := getDoc(ctx, store, format.PoolMarkerKey, format.KindPool, &p.marker); {
	case errors.Is(err, objstore.ErrNotFound):
		return nil, ErrNoPool
	case err != nil:
		return nil, fmt.Errorf("open pool: read marker: %w", err)
	}
	return p, nil
}

// OpenPoolURL opens the object store at poolURL and the pool in it. The
// pool owns the store: Close closes it. A missing pool marker is an error
// wrapping ErrNoPool that says how to create the pool.
func OpenPoolURL(ctx context.Context, poolURL string, opts PoolOptions) (*Pool, error) {
	return openPoolURL(ctx, poolURL, opts, OpenPool)
}

// InitPoolURL is InitPool on the object store at poolURL; the pool owns the
// store, as with OpenPoolURL.
func InitPoolURL(ctx context.Context, poolURL string, opts PoolOptions) (*Pool, error) {
	return openPoolURL(ctx, poolURL, opts, InitPool)
}

func openPoolURL(ctx context.Context, poolURL string, opts PoolOptions, open func(context.Context, objstore.Store, PoolOptions) (*Pool, error)) (*Pool, error) {
	store, err := objstore.Open(ctx, poolURL)
	if err != nil {
		return nil, err
	}
	p, err := open(ctx, store, opts)
	if err != nil {
		store.Close()
		if errors.Is(err, ErrNoPool) {
			return nil, fmt.Errorf("%s: %w: pool not found or not initialised (create it with `urldisk pool init %s`)", objstore.Redact(poolURL), err, objstore.Redact(poolURL))
		}
		return nil, err
	}
	p.ownStore = true
	return p, nil
}

// requireConditionalCreate probes the pool's store (objstore.Probe) and
// returns an error wrapping ErrNoConditionalCreate, naming the store, if it
// does not honour create-if-absent. Every writer calls it before fencing,
// once per attach: fencing is only as good as create-if-absent, and the
// pool marker's answer was about the endpoint used at init, not the one in
// use now (a proxy or gateway in between may drop If-None-Match, and two
// writers would then both own the volume).
func (p *Pool) requireConditionalCreate(ctx context.Context, log *slog.Logger) error {
	t0 := time.Now()
	ok, err := objstore.Probe(ctx, p.store)
	// A probe that failed in transit (not one that found an overwrite) is
	// tried again, as the fence create it precedes would be: a transient
	// store error must not fail an attach that the fence would survive.
	for try, backoff := 1, 50*time.Millisecond; err != nil && try < 3 && sleepCtx(ctx, backoff); try, backoff = try+1, backoff*4 {
		log.Warn("conditional-create probe failed; retrying", "err", err)
		ok, err = objstore.Probe(ctx, p.store)
	}
	log.Debug("conditional-create probe", "honoured", ok, "duration", time.Since(t0), "err", err)
	if err != nil {
		return fmt.Errorf("probe conditional create: %w", err)
	}
	if !ok {
		return noConditionalCreate(ctx, p.store)
	}
	return nil
}

// noConditionalCreate is the ErrNoConditionalCreate for store, naming it
// and saying what to do.
func noConditionalCreate(ctx context.Context, store objstore.Store) error {
	return fmt.Errorf("%w: %s overwrote an object on a second create-if-absent (If-None-Match ignored?), "+
		"so two writers could both own a volume; open it read-only, or use a store (and any proxy in front of it) that honours conditional create",
		ErrNoConditionalCreate, objstore.Describe(ctx, store))
}

// Close closes the pool's store if the pool opened it (OpenPoolURL,
// InitPoolURL); a store passed to OpenPool or InitPool stays the caller's.
// Volumes opened from the pool must be closed first.
func (p *Pool) Close() error {
	if !p.ownStore {
		return nil
	}
	if err := p.store.Close(); err != nil {
		return fmt.Errorf("close pool store: %w", err)
	}
	return nil
}

// Store returns the pool's object store.
func (p *Pool) Store() objstore.Store { return p.store }

// Marker returns the pool marker.
func (p *Pool) Marker() format.PoolMarker { return p.marker }

func newID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// CreateOptions describe a new volume.
type CreateOptions struct {
	Size      uint64 // bytes; must be a positive multiple of BlockSize
	BlockSize uint32 // bytes; 0 means 4096
	// Encrypt seals every record with a new random data key wrapped by
	// the pool's key (PoolOptions.Key), which must be given.
	Encrypt bool
	// Compression compresses every record's chunks ("lz4"; "" or "none":
	// not compressed). Clones inherit it.
	Compression string
}

// Create makes a new empty volume called name.
func (p *Pool) Create(ctx context.Context, name string, o CreateOptions) (*format.VolumeDesc, error) {
	if err := volref.ValidateName(name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if o.BlockSize == 0 {
		o.BlockSize = 4096
	}
	id, err := newID()
	if err != nil {
		return nil, err
	}
	d := &format.VolumeDesc{ID: id, Name: name, Size: o.Size, BlockSize: o.BlockSize, Created: p.clock.Now().UTC()}
	switch o.Compression {
	case "", "none":
	case format.CompressLZ4:
		d.Compression = format.CompressLZ4
	default:
		return nil, fmt.Errorf("%w: compression %q not supported (want %s or none)", ErrInvalid, o.Compression, format.CompressLZ4)
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("%w: size %d with block size %d: size must be a positive multiple of the block size", ErrInvalid, o.Size, o.BlockSize)
	}
	if o.Encrypt {
		kek, err := p.kek(ctx)
		if err != nil {
			return nil, fmt.Errorf("create %q --encrypt: %w (pass --key-file, --key-command or $URLDISK_KEY)", name, err)
		}
		if d.Encryption, err = format.NewEncryption(kek); err != nil {
			return nil, fmt.Errorf("create %q: %w", name, err)
		}
	}
	// An empty snapshot 0 dates the volume's beginning for GC's retention
	// window, as a clone's snapshot 0 does.
	snap0 := format.AppendSnapshot(nil, &format.SnapshotHeader{Volume: id, Size: o.Size, Time: p.clock.Now().UnixNano(), Vols: []string{id}},
		func(func(format.SnapExtent) bool) {})
	return d, p.bind(ctx, d, snap0)
}

// bind writes a descriptor (and an initial snapshot, for clones) and then
// claims the name; the name is the commit point.
//
// It refuses (ErrNoConditionalCreate) where create-if-absent is not
// honoured: in a pool whose marker says so, or through a store that fails
// the probe now. A volume there could never be opened read-write, and the
// name's create-if-absent below is what keeps two creators of one name
// from both succeeding.
func (p *Pool) bind(ctx context.Context, d *format.VolumeDesc, initialSnap []byte) error {
	if !p.marker.ConditionalCreate {
		return fmt.Errorf("create %q: %w", d.Name, noConditionalCreate(ctx, p.store))
	}
	if err := p.requireConditionalCreate(ctx, p.log); err != nil {
		return fmt.Errorf("create %q: %w", d.Name, err)
	}
	if _, err := p.store.Stat(ctx, format.NameKey(d.Name)); err == nil {
		return fmt.Errorf("create %q: %w", d.Name, ErrExists)
	}
	b, err := format.EncodeDoc(format.KindVolume, d)
	if err != nil {
		return err
	}
	if err := p.store.PutIfAbsent(ctx, format.VolumeKey(d.ID), b); err != nil {
		return fmt.Errorf("create %q: write descriptor: %w", d.Name, err)
	}
	if initialSnap != nil {
		if err := p.store.PutIfAbsent(ctx, format.SnapKey(d.ID, 0), initialSnap); err != nil {
			return fmt.Errorf("create %q: write initial snapshot: %w", d.Name, err)
		}
	}
	nb, err := format.EncodeDoc(format.KindName, &format.NameBinding{ID: d.ID})
	if err != nil {
		return err
	}
	if err := p.store.PutIfAbsent(ctx, format.NameKey(d.Name), nb); err != nil {
		// Lost the race for the name: the descriptor is garbage now.
		_ = p.deleteVolumeObjects(ctx, d.ID)
		if errors.Is(err, objstore.ErrExists) {
			return fmt.Errorf("create %q: %w", d.Name, ErrExists)
		}
		return fmt.Errorf("create %q: bind name: %w", d.Name, err)
	}
	return nil
}

// Resolve returns the descriptor of the volume called name.
func (p *Pool) Resolve(ctx context.Context, name string) (*format.VolumeDesc, error) {
	if err := volref.ValidateName(name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var nb format.NameBinding
	switch err := getDoc(ctx, p.store, format.NameKey(name), format.KindName, &nb); {
	case errors.Is(err, objstore.ErrNotFound):
		return nil, notFound("volume", name)
	case err != nil:
		return nil, fmt.Errorf("resolve %q: %w", name, err)
	}
	return p.descriptor(ctx, nb.ID)
}

// getDoc reads the JSON document of kind at key into v. A missing object
// is the store's objstore.ErrNotFound, for the caller to name what is
// missing; a malformed one wraps format.ErrCorrupt.
func getDoc(ctx context.Context, store objstore.Store, key, kind string, v any) error {
	b, err := store.Get(ctx, key)
	if err != nil {
		return err
	}
	return format.DecodeDoc(kind, b, v)
}

func (p *Pool) descriptor(ctx context.Context, id string) (*format.VolumeDesc, error) {
	var d format.VolumeDesc
	if err := getDoc(ctx, p.store, format.VolumeKey(id), format.KindVolume, &d); err != nil {
		return nil, fmt.Errorf("read descriptor of volume %s: %w", id, err)
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("read descriptor of volume %s: %w", id, err)
	}
	return &d, nil
}

// List returns the descriptors of every named volume, sorted by name.
func (p *Pool) List(ctx context.Context) ([]*format.VolumeDesc, error) {
	var names []string
	err := p.store.List(ctx, format.NamesPrefix, func(oi objstore.ObjectInfo) error {
		names = append(names, oi.Key[len(format.NamesPrefix):])
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	sort.Strings(names)
	var out []*format.VolumeDesc
	for _, n := range names {
		d, err := p.Resolve(ctx, n)
		if errors.Is(err, ErrNotFound) {
			continue // removed while listing
		}
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// Remove deletes the volume called name: it writes a tombstone and unbinds
// the name, so nobody opens it again. Its objects are freed by GC once the
// grace period has passed (a clone being made from it right now must be
// able to finish), except the records clones still reference. A writer
// still attached elsewhere is not stopped by this.
func (p *Pool) Remove(ctx context.Context, name string) error {
	d, err := p.Resolve(ctx, name)
	if err != nil {
		return err
	}
	if err := p.store.Put(ctx, format.VolsPrefix+d.ID+"/"+tombstoneName, []byte("deleted\n")); err != nil {
		return fmt.Errorf("remove %q: write tombstone: %w", name, err)
	}
	if err := p.store.Delete(ctx, format.NameKey(name)); err != nil {
		return fmt.Errorf("remove %q: unbind name: %w", name, err)
	}
	return nil
}

func (p *Pool) deleteVolumeObjects(ctx context.Context, id string) error {
	var keys []string
	if err := p.store.List(ctx, format.VolsPrefix+id+"/", func(oi objstore.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		return fmt.Errorf("remove volume %s: list: %w", id, err)
	}
	// Descriptor last, so a half-removed volume is still recognisable.
	sort.Slice(keys, func(i, j int) bool { return keys[j] == format.VolumeKey(id) })
	for _, k := range keys {
		if err := p.store.Delete(ctx, k); err != nil {
			return fmt.Errorf("remove volume %s: delete %s: %w", id, k, err)
		}
	}
	return nil
}
