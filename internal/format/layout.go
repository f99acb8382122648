package format

import (
	"fmt"
	"strconv"
	"strings"
)

// Object keys inside a pool (relative to the pool prefix).
const (
	PoolMarkerKey = "urldisk-pool.json"
	NamesPrefix   = "names/"
	VolsPrefix    = "vols/"
)

// NameKey is where a volume name is bound to its id.
func NameKey(name string) string { return NamesPrefix + name }

// VolumeKey is a volume's descriptor.
func VolumeKey(id string) string { return VolsPrefix + id + "/volume.json" }

// LogPrefix is the prefix of a volume's log records.
func LogPrefix(id string) string { return VolsPrefix + id + "/log/" }

// SnapPrefix is the prefix of a volume's snapshots.
func SnapPrefix(id string) string { return VolsPrefix + id + "/snap/" }

// CheckpointPrefix is the prefix of a volume's checkpoints.
func CheckpointPrefix(id string) string { return VolsPrefix + id + "/ckpt/" }

// PolicyKey is a volume's automatic-checkpoint policy.
func PolicyKey(id string) string { return VolsPrefix + id + "/policy" }

// LogKey names record seq of volume id.
func LogKey(id string, seq uint64) string { return fmt.Sprintf("%s%016x", LogPrefix(id), seq) }

// SnapKey names the snapshot at seq of volume id.
func SnapKey(id string, seq uint64) string { return fmt.Sprintf("%s%016x", SnapPrefix(id), seq) }

// ParseSeqKey extracts the sequence number from a log or snapshot key
// (the 16 hex digits after the last '/').
func ParseSeqKey(key string) (uint64, error) {
	base := key[strings.LastIndexByte(key, '/')+1:]
	if len(base) != 16 {
		return 0, fmt.Errorf("key %q: not a sequence key", key)
	}
	v, err := strconv.ParseUint(base, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("key %q: not a sequence key", key)
	}
	return v, nil
}
