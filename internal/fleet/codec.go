package fleet

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/urldisk/urldisk/internal/format"
)

// Document kinds in format's envelope ("urldisk-<kind> v1 crc32c=...").
const (
	KindAgent     = "fleet-agent"
	KindPlacement = "fleet-machine"
	KindAck       = "fleet-ack"
	KindTrace     = "fleet-trace"
)

// Key prefixes under the fleet store's root.
const (
	Prefix         = "fleet/"
	AgentsPrefix   = Prefix + "agents/"
	MachinesPrefix = Prefix + "machines/"
	AcksPrefix     = Prefix + "acks/"
	DrainPrefix    = Prefix + "drain/"
	TracesPrefix   = Prefix + "traces/"
	AssignPrefix   = Prefix + "assign/"
)

// AgentKey is the heartbeat of host.
func AgentKey(host string) string { return AgentsPrefix + host }

// MachinePrefix holds every placement version of a machine.
func MachinePrefix(name string) string { return MachinesPrefix + name + "/" }

// PlacementKey is version v of a machine's placement.
func PlacementKey(name string, v uint64) string {
	return fmt.Sprintf("%s%016x", MachinePrefix(name), v)
}

// AckKey is the ack of version v of a machine.
func AckKey(name string, v uint64) string { return fmt.Sprintf("%s%s/%016x", AcksPrefix, name, v) }

// DrainKey marks host as draining.
func DrainKey(host string) string { return DrainPrefix + host }

// TraceKey is a machine's access trace.
func TraceKey(name string) string { return TracesPrefix + name }

// HostAssignPrefix holds host's assignment index: one empty marker per
// placement version that concerns it.
func HostAssignPrefix(host string) string { return AssignPrefix + host + "/" }

// AssignKey marks version v of a machine as concerning host.
func AssignKey(host, name string, v uint64) string {
	return fmt.Sprintf("%s%s/%016x", HostAssignPrefix(host), name, v)
}

// ParseAssignKey splits a key under HostAssignPrefix(host) into machine
// name and version; ok is false for anything else.
func ParseAssignKey(host, key string) (name string, v uint64, ok bool) {
	rest, found := strings.CutPrefix(key, HostAssignPrefix(host))
	if !found {
		return "", 0, false
	}
	return parseNameVersion(rest)
}

// ParsePlacementKey splits a key under MachinesPrefix into machine name
// and version; ok is false for anything else.
func ParsePlacementKey(key string) (name string, v uint64, ok bool) {
	rest, found := strings.CutPrefix(key, MachinesPrefix)
	if !found {
		return "", 0, false
	}
	return parseNameVersion(rest)
}

// parseNameVersion splits "<name>/<version:016x>".
func parseNameVersion(rest string) (name string, v uint64, ok bool) {
	name, hex, found := strings.Cut(rest, "/")
	if !found || len(hex) != 16 || ValidateName("machine", name) != nil {
		return "", 0, false
	}
	v, err := strconv.ParseUint(hex, 16, 64)
	if err != nil || v == 0 {
		return "", 0, false
	}
	return name, v, true
}

// EncodePlacement returns p as a checksummed document.
func EncodePlacement(p *Placement) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return format.EncodeDoc(KindPlacement, p)
}

// DecodePlacement decodes and validates a placement document; a malformed
// one is format.ErrCorrupt.
func DecodePlacement(b []byte) (*Placement, error) {
	return decodeDoc(KindPlacement, "placement", b, (*Placement).Validate)
}

// EncodeHeartbeat returns h as a checksummed document.
func EncodeHeartbeat(h *Heartbeat) ([]byte, error) { return format.EncodeDoc(KindAgent, h) }

// DecodeHeartbeat decodes a heartbeat document.
func DecodeHeartbeat(b []byte) (*Heartbeat, error) {
	return decodeDoc(KindAgent, "heartbeat", b, func(h *Heartbeat) error { return ValidateName("host", h.Host) })
}

// EncodeAck returns a as a checksummed document.
func EncodeAck(a *Ack) ([]byte, error) { return format.EncodeDoc(KindAck, a) }

// DecodeAck decodes an ack document.
func DecodeAck(b []byte) (*Ack, error) {
	return decodeDoc(KindAck, "ack", b, func(*Ack) error { return nil })
}

// EncodeTrace returns t as a checksummed document.
func EncodeTrace(t *Trace) ([]byte, error) { return format.EncodeDoc(KindTrace, t) }

// DecodeTrace decodes a trace document.
func DecodeTrace(b []byte) (*Trace, error) {
	return decodeDoc(KindTrace, "trace", b, func(t *Trace) error {
		if t.PageSize <= 0 {
			return fmt.Errorf("page size %d", t.PageSize)
		}
		return nil
	})
}

// decodeDoc decodes a document of kind into a new T and checks it with
// valid: a document whose envelope is sound but whose content is not is
// as corrupt as a bad checksum (format.ErrCorrupt), naming what.
func decodeDoc[T any](kind, what string, b []byte, valid func(*T) error) (*T, error) {
	v := new(T)
	if err := format.DecodeDoc(kind, b, v); err != nil {
		return nil, err
	}
	if err := valid(v); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", format.ErrCorrupt, what, err)
	}
	return v, nil
}
