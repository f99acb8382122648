// Package volume is urldisk's volume engine: pools of volumes in an object
// store, each volume a log of immutable records (DESIGN.md §3–§6).
//
// A Pool creates, lists and removes volumes. Pool.Open attaches one:
// read-write (replay, then fence: the volume's single writer from then on)
// or read-only (replay only). An open *Volume is a blockdev.Device:
//
//   - writes land in an in-memory segment (reads see them at once), which is
//     sealed into a data record when it reaches SegmentBytes, when the volume
//     has been idle for IdleFlush, or on Flush; sealed records are uploaded
//     with create-if-absent, several in flight, and acknowledged in sequence
//     order by the journal state machine;
//   - Flush returns once every write before it is inside records that exist
//     in the object store (FLUSH means durable);
//   - reads come from pending segments, the host cache, or ranged GETs of
//     record chunks (with readahead and one GET per concurrently missed chunk);
//   - a writer that finds another writer's fence stops: every later call
//     returns blockdev.ErrFenced.
//
// Callers own a Volume's lifetime: Close flushes, writes a snapshot and
// releases it. Uploads and timers are goroutines owned by the Volume.
package volume
