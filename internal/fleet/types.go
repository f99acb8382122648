package fleet

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/urldisk/urldisk/internal/volref"
)

// Errors returned by this package; match them with errors.Is.
var (
	// ErrInvalid: a bad machine name, host id or spec.
	ErrInvalid = errors.New("invalid machine spec")
	// ErrNoMachine: no machine of that name (or it was removed).
	ErrNoMachine = errors.New("no such machine")
	// ErrMachineExists: a machine of that name already exists.
	ErrMachineExists = errors.New("machine already exists")
	// ErrUnknownHost: no agent with that id ever heartbeated in this fleet.
	ErrUnknownHost = errors.New("unknown host")
	// ErrHostDead: the host has stopped heartbeating.
	ErrHostDead = errors.New("host is not live")
	// ErrNoHosts: no live, non-draining host to place a machine on.
	ErrNoHosts = errors.New("no live host available")
	// ErrVolumeInUse: another machine already uses the volume.
	ErrVolumeInUse = errors.New("volume already used by another machine")
	// ErrNoChange: the requested change is already in effect; nothing was
	// written. Update's next function returns it to stop.
	ErrNoChange = errors.New("nothing to change")
	// ErrContended: too many concurrent writers kept winning the next
	// version; try again.
	ErrContended = errors.New("placement contended by concurrent writers")
)

// Runtimes a machine can use.
const (
	// RuntimeProcess runs Spec.Args as a command with URLDISK_NBD_URI in
	// its environment.
	RuntimeProcess = "process"
	// RuntimeQemu runs qemu-system-x86_64 with the volume as its NVMe root
	// disk; Spec.Args are extra qemu arguments.
	RuntimeQemu = "qemu"
)

// State is a machine's desired state.
type State string

// Desired states.
const (
	Running State = "running"
	Stopped State = "stopped"
	Deleted State = "deleted"
)

// Reasons a placement version was written.
const (
	ReasonRun      = "run"
	ReasonStop     = "stop"
	ReasonStart    = "start"
	ReasonRemove   = "rm"
	ReasonMigrate  = "migrate"
	ReasonDrain    = "drain"
	ReasonFailover = "failover"
)

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// ValidateName checks a machine name or host id: 1 to 63 characters of
// [a-zA-Z0-9._-], starting with a letter or digit.
func ValidateName(what, s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %s %q: want 1-63 characters of [a-zA-Z0-9._-] starting with a letter or digit", ErrInvalid, what, s)
	}
	return nil
}

// QemuSpec is the VM of a qemu machine. Paths are local to every host.
type QemuSpec struct {
	// Kernel is the path of the kernel image (direct boot); required.
	Kernel string `json:"kernel"`
	// Initrd is the path of an initramfs; optional.
	Initrd string `json:"initrd,omitempty"`
	// Append is the kernel command line.
	Append string `json:"append,omitempty"`
	// MemoryMiB is the guest memory; 0 means 512.
	MemoryMiB int `json:"memory_mib,omitempty"`
	// CPUs is the number of virtual CPUs; 0 means 1.
	CPUs int `json:"cpus,omitempty"`
	// Accel forces "kvm" or "tcg"; "" means kvm when /dev/kvm works.
	Accel string `json:"accel,omitempty"`
}

// Spec is what a machine runs.
type Spec struct {
	// Volume is the URL of the machine's volume (<pool>/<name>), without
	// credentials.
	Volume string `json:"volume"`
	// Runtime is RuntimeProcess or RuntimeQemu.
	Runtime string `json:"runtime"`
	// Args: for process, the command and its arguments; for qemu, extra
	// qemu-system-x86_64 arguments.
	Args []string `json:"args,omitempty"`
	// Env adds KEY=VALUE pairs to a process machine's environment (which
	// otherwise holds only PATH, HOME, LANG, TZ, TMPDIR and the URLDISK_
	// variables: never the agent's credentials).
	Env []string `json:"env,omitempty"`
	// Qemu is required for the qemu runtime and refused for the others.
	Qemu *QemuSpec `json:"qemu,omitempty"`
	// RunAs is the local user the workload runs as on every host: a user
	// name (its primary group and groups) or numeric "UID:GID". The agent
	// must run as root for it. "" runs the workload as the agent's user,
	// which can reach everything the agent can (other machines' disks,
	// the API token).
	RunAs string `json:"run_as,omitempty"`
}

var runAsRE = regexp.MustCompile(`^([a-z_][a-z0-9_.-]{0,31}\$?|[0-9]+:[0-9]+)$`)

// Validate checks the spec on its own (not whether the volume exists).
func (s *Spec) Validate() error {
	if s.Volume == "" {
		return fmt.Errorf("%w: missing volume URL", ErrInvalid)
	}
	if _, err := volref.ParseHead(s.Volume); err != nil {
		return fmt.Errorf("%w: volume: %w", ErrInvalid, err)
	}
	for _, kv := range s.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("%w: env %q: want KEY=VALUE", ErrInvalid, kv)
		}
	}
	if s.RunAs != "" && !runAsRE.MatchString(s.RunAs) {
		return fmt.Errorf("%w: run-as %q: want a user name or UID:GID", ErrInvalid, s.RunAs)
	}
	switch s.Runtime {
	case RuntimeProcess:
		if len(s.Args) == 0 || s.Args[0] == "" {
			return fmt.Errorf("%w: the process runtime needs a command (after --)", ErrInvalid)
		}
		if s.Qemu != nil {
			return fmt.Errorf("%w: qemu settings given for the process runtime", ErrInvalid)
		}
	case RuntimeQemu:
		q := s.Qemu
		if q == nil || q.Kernel == "" {
			return fmt.Errorf("%w: the qemu runtime needs a kernel (--kernel PATH)", ErrInvalid)
		}
		if q.MemoryMiB < 0 || q.CPUs < 0 || q.CPUs > 256 {
			return fmt.Errorf("%w: qemu memory %d MiB / %d cpus out of range", ErrInvalid, q.MemoryMiB, q.CPUs)
		}
		if q.Accel != "" && q.Accel != "kvm" && q.Accel != "tcg" {
			return fmt.Errorf("%w: qemu accel %q: want kvm or tcg", ErrInvalid, q.Accel)
		}
	case "":
		return fmt.Errorf("%w: missing runtime (want %s or %s)", ErrInvalid, RuntimeProcess, RuntimeQemu)
	default:
		return fmt.Errorf("%w: unknown runtime %q (want %s or %s)", ErrInvalid, s.Runtime, RuntimeProcess, RuntimeQemu)
	}
	return nil
}

// Equal reports whether two specs are the same.
func (s *Spec) Equal(o *Spec) bool {
	eq := func(a, b []string) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	if s.Volume != o.Volume || s.Runtime != o.Runtime || !eq(s.Args, o.Args) || !eq(s.Env, o.Env) || s.RunAs != o.RunAs {
		return false
	}
	if (s.Qemu == nil) != (o.Qemu == nil) {
		return false
	}
	return s.Qemu == nil || *s.Qemu == *o.Qemu
}

// Placement is one version of a machine's desired state:
// fleet/machines/<name>/<version:016x>. The highest version is the truth.
type Placement struct {
	Name string `json:"name"`
	// Version is dense from 1; version N+1 is created only by someone who
	// read version N.
	Version uint64 `json:"version"`
	Spec    Spec   `json:"spec"`
	// VolumeID is the id of the volume Spec.Volume was bound to when the
	// machine was created (the pool's names/<name>), so two URL spellings
	// of one volume are one volume. "" in placements written before it
	// was recorded, or by an Ops without ResolveVolume.
	VolumeID string `json:"volume_id,omitempty"`
	// Host is the agent that should run the machine (or starts it next,
	// when stopped).
	Host  string `json:"host"`
	State State  `json:"state"`
	// From is the host that ran the machine under the previous version and
	// must ack its stop before Host attaches; "" when nobody was running it
	// or its host is presumed dead (failover).
	From string `json:"from,omitempty"`
	// Reason says why this version was written (ReasonRun, ...).
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
	// By names the writer, e.g. "cli" or "agent h2".
	By string `json:"by"`
	// Nonce is random per write, so a writer whose create response was lost
	// recognises its own object.
	Nonce string `json:"nonce"`
}

// Validate checks a decoded placement's fields.
func (p *Placement) Validate() error {
	if err := ValidateName("machine", p.Name); err != nil {
		return err
	}
	if p.Version == 0 {
		return fmt.Errorf("%w: placement version 0", ErrInvalid)
	}
	switch p.State {
	case Running, Stopped, Deleted:
	default:
		return fmt.Errorf("%w: placement state %q", ErrInvalid, p.State)
	}
	if p.State != Deleted {
		if err := ValidateName("host", p.Host); err != nil {
			return err
		}
		if err := p.Spec.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// RunsOn reports whether the placement wants the machine running on host.
func (p *Placement) RunsOn(host string) bool {
	return p != nil && p.State == Running && p.Host == host
}

// Phase is what an agent is doing with a machine.
type Phase string

// Phases an agent reports.
const (
	PhaseWaiting  Phase = "waiting"  // for the previous host's stop
	PhaseStarting Phase = "starting" // attaching the volume, starting the runtime
	PhaseRunning  Phase = "running"
	PhaseStopping Phase = "stopping"
	PhaseStopped  Phase = "stopped"
	PhaseExited   Phase = "exited" // the workload ended by itself
	PhaseFenced   Phase = "fenced" // another host took the volume over
	PhaseFailed   Phase = "failed" // could not start; retried with backoff
)

// MachineStatus is an agent's report on one machine it runs or ran.
type MachineStatus struct {
	Name    string `json:"name"`
	Version uint64 `json:"version"`
	Phase   Phase  `json:"phase"`
	// Epoch is the volume's writer epoch while attached.
	Epoch uint64 `json:"epoch,omitzero"`
	// NBD is the export's URI while attached.
	NBD     string    `json:"nbd,omitzero"`
	Started time.Time `json:"started,omitzero"`
	// FirstIO is when the export served its first request.
	FirstIO time.Time `json:"first_io,omitzero"`
	// Downtime is from the previous host's stop to FirstIO, when this
	// version moved a running machine here.
	Downtime time.Duration `json:"downtime_ns,omitzero"`
	ExitCode int           `json:"exit_code,omitzero"`
	Error    string        `json:"error,omitzero"`
}

// CacheStats summarises an agent's host cache.
type CacheStats struct {
	Bytes    int64  `json:"bytes"`
	Capacity int64  `json:"capacity"`
	Hits     uint64 `json:"hits"`
	Misses   uint64 `json:"misses"`
}

// HitRate is hits / (hits + misses), or 0 with no reads.
func (c CacheStats) HitRate() float64 {
	if c.Hits+c.Misses == 0 {
		return 0
	}
	return float64(c.Hits) / float64(c.Hits+c.Misses)
}

// Heartbeat is fleet/agents/<host>, overwritten every interval.
type Heartbeat struct {
	Host string `json:"host"`
	// API is the agent's HTTP API base URL.
	API string `json:"api"`
	// Seq increases with every heartbeat of one agent run; Started tells
	// runs apart.
	Seq     uint64    `json:"seq"`
	Started time.Time `json:"started"`
	Time    time.Time `json:"time"`
	// Interval and Timeout are the agent's heartbeat settings.
	Interval time.Duration `json:"interval_ns"`
	Timeout  time.Duration `json:"timeout_ns"`
	// Down is set by an agent that stopped cleanly (its machines stopped):
	// it is dead at once.
	Down     bool            `json:"down,omitzero"`
	Machines []MachineStatus `json:"machines"`
	Cache    CacheStats      `json:"cache"`
	// Fenced counts the machines this agent run lost to another writer.
	Fenced uint64 `json:"fenced,omitzero"`
}

// Running returns the number of machines the agent reports running or
// starting.
func (h *Heartbeat) Running() int {
	n := 0
	for _, m := range h.Machines {
		if m.Phase == PhaseRunning || m.Phase == PhaseStarting || m.Phase == PhaseWaiting {
			n++
		}
	}
	return n
}

// Machine returns the status of the named machine, if reported.
func (h *Heartbeat) Machine(name string) (MachineStatus, bool) {
	for _, m := range h.Machines {
		if m.Name == name {
			return m, true
		}
	}
	return MachineStatus{}, false
}

// Ack is fleet/acks/<name>/<version>: Host (the placement's From) does not
// run the machine any more.
type Ack struct {
	Name    string `json:"name"`
	Version uint64 `json:"version"`
	Host    string `json:"host"`
	// StopBegan is when Host began stopping the machine (zero if it was
	// not running there); Stopped is when the volume was detached.
	StopBegan time.Time `json:"stop_began,omitzero"`
	Stopped   time.Time `json:"stopped"`
	// Epoch is the writer epoch Host held; Error is a failed final flush
	// (for example because it had been fenced).
	Epoch uint64 `json:"epoch,omitzero"`
	Error string `json:"error,omitzero"`
}

// Trace is fleet/traces/<name>: the volume pages a machine used recently,
// in the order it first touched them (the order it needs them in when it
// starts again), so the next host can warm its cache in that order.
type Trace struct {
	Name   string    `json:"name"`
	Volume string    `json:"volume"`
	Host   string    `json:"host"`
	Time   time.Time `json:"time"`
	// PageSize is the page size in bytes; Pages are page indexes.
	PageSize int64    `json:"page_size"`
	Pages    []uint64 `json:"pages"`
}
