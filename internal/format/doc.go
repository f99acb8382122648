// Package format encodes and decodes every object urldisk stores: the pool
// marker, volume descriptors, name bindings, checkpoints (JSON documents in a
// checksummed text envelope) and the binary log records and extent-map
// snapshots. It is pure: no I/O, no clocks. Every decoder rejects malformed
// input with an error wrapping ErrCorrupt and never panics (fuzzed).
//
// The byte layouts are documented in FORMAT.md at the repository root.
package format
