// Package cache is the per-host read cache of immutable record chunks: a
// bounded, checksummed, restart-surviving copy of bytes whose durable home is
// the object store. Losing it loses nothing but warmth.
//
// # Design
//
// A cache lives in one directory, shared by every volume the process serves:
//
//	lock   flock(2)ed exclusively by the open Cache; holds the owner's pid
//	slab   N slots of ChunkSize bytes, preallocated with fallocate(2)
//	index  the persisted slot table (keys, lengths, checksums)
//
// The unit is a chunk: up to ChunkSize (64 KiB) bytes of one record, named by
// Key{Vol, Seq, Chunk}. Each chunk occupies one slot whatever its length.
// In memory the cache keeps map[Key]slot and, per slot, the key, the length,
// a CRC-32C (Castagnoli) of every SubBlockSize (4 KiB) sub-block, a
// generation counter and a CLOCK reference bit (about 120 bytes per 64 KiB
// slot, 0.2% of the cache size).
//
// Reads: ReadAt looks the key up under a read lock, copies the expected
// checksums and the slot's generation, and releases the lock. It then preads
// the touched sub-blocks and verifies each one. Finally it checks the
// generation again: Put bumps it before overwriting a slot, so an unchanged
// generation proves the bytes just verified were not being replaced. A hit
// is one pread plus one CRC per touched 4 KiB and allocates nothing.
//
// Writes: Put claims a slot under the lock (a free slot, or one evicted by
// CLOCK: the hand clears set reference bits and takes the first slot whose bit
// is already clear), marks it "writing", and drops the lock for the pwrite.
// Then it publishes the checksums and marks the slot readable. A chunk is
// never readable before its bytes are fully written.
//
// Persistence: the index is written atomically (tmp, fsync, rename, fsync dir)
// every Options.IndexSyncInterval and on Close, after an fsync of the slab.
// A failed write (a full cache disk: ENOSPC) removes the tmp file and keeps
// the old index.
//
// Write failures: a failed slab write leaves the chunk uncached, a failed
// index write leaves the old index; both count in Stats.WriteErrors and are
// logged as one WARN (naming the directory and the error) per
// WriteWarnInterval, so a full cache disk is visible without flooding logs.
// On Open a valid index for a slab of the same size is loaded; a missing,
// corrupt or mismatched index (or a new or resized slab) means starting
// empty. After a crash the index may be stale: a slot it lists may since have
// been reused for another key. That is safe because every read verifies
// checksums. The other key's bytes fail the stale entry's checksum, and the
// entry is dropped and counted in Stats.Corrupt. Bytes that pass are the key's
// own bytes, because chunk contents never change.
//
// # Caller's duties
//
//   - A Key must name the same bytes forever. Volume ids must never be reused
//     for a different volume, and a record's chunking (ChunkSize-aligned pieces)
//     must not change. Put of a key already present is a no-op and does not
//     check that the bytes match.
//   - Treat any miss, and any error from ReadAt, as "fetch from the object
//     store". On a miss, p's contents are unspecified. Errors from Put mean
//     "not cached" and are never fatal to the caller.
//   - If Open fails (errors.Is(err, ErrLocked) when another process holds the
//     directory, errors.Is(err, ErrUnusable) when the directory is read-only,
//     full or otherwise unusable), run without a cache rather than failing.
//   - One Cache per directory per host. The directory may be deleted while no
//     Cache has it open; Open recreates it. Deleting it under a running Cache
//     is not supported.
//   - Call Close at shutdown. It persists the index so the next start is warm.
package cache
