package agent

import (
	"github.com/urldisk/urldisk/internal/agent/workload"
	"github.com/urldisk/urldisk/internal/fleet"
)

// workloadSpec converts a placement's spec into what agent/workload runs.
// The conversion lives here so that package knows nothing of the fleet.
func workloadSpec(s fleet.Spec) workload.Spec {
	w := workload.Spec{Args: s.Args, Env: s.Env}
	switch s.Runtime {
	case fleet.RuntimeProcess:
		w.Kind = workload.KindProcess
	case fleet.RuntimeQemu:
		w.Kind = workload.KindQemu
	default:
		w.Kind = s.Runtime // workload refuses it, naming it
	}
	if q := s.Qemu; q != nil {
		w.Qemu = &workload.QemuSpec{Kernel: q.Kernel, Initrd: q.Initrd, Append: q.Append, MemoryMiB: q.MemoryMiB, CPUs: q.CPUs, Accel: q.Accel}
	}
	return w
}
