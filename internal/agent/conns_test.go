package agent

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/testutil/nbdclient"
)

// A machine's workload cannot hold more than machineMaxConns connections
// to its own NBD socket: each is a file descriptor of the agent, which
// every other machine's export and uploads share (the export's default
// was serve's whole-process bound, 1024 per machine). The connections
// over the bound are closed without a greeting; once some close, new ones
// are served.
func TestMachineConnectionsBounded(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	a := w.startAgent("a", nil)
	if _, err := w.ops.Run(ctx, "m", fleet.Spec{Volume: w.createVolume("v1"), Runtime: fleet.RuntimeProcess, Args: []string{"sleep", "1000"}}, "a"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	waitFor(t, "m running", func() bool {
		st, ok := a.machine("m")
		return ok && st.Phase == fleet.PhaseRunning
	})
	sock := filepath.Join(a.machineSockDir("m"), nbdSocketName)

	const extra = 20
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	greeted := 0
	for i := range machineMaxConns + extra {
		c, err := net.DialTimeout("unix", sock, 10*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 18)); err == nil {
			greeted++
		}
	}
	if greeted != machineMaxConns {
		t.Fatalf("%d of %d connections to one machine's socket got a greeting, want %d", greeted, machineMaxConns+extra, machineMaxConns)
	}

	for _, c := range conns {
		c.Close()
	}
	conns = nil
	var cn *nbdclient.Conn
	waitFor(t, "a connection served after the others closed", func() bool {
		var err error
		cn, err = nbdclient.Dial("nbd+unix:///v1?socket="+sock, 10*time.Second)
		return err == nil
	})
	defer cn.Close()
	if err := cn.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("read after the connections closed: %v", err)
	}
}

// The NBD payload budget is the agent's, not each machine's: clients of two
// machines that send READs and never read the replies hold no more than
// Config.NBDQueuedBytes together (each machine's server alone would allow
// its own 256 MiB, N machines N times that).
func TestMachinesShareOneNBDBudget(t *testing.T) {
	const mib = 1 << 20
	const budget = 80 * mib // above one connection's MaxBufferBytes (2 x 32 MiB payload buffers)
	ctx := context.Background()
	w := newWorld(t)
	a := w.startAgentWith("a", nil, func(c *Config) { c.NBDQueuedBytes = budget })
	for _, m := range []string{"m1", "m2"} {
		if _, err := w.ops.Run(ctx, m, fleet.Spec{Volume: w.createVolume("v-" + m), Runtime: fleet.RuntimeProcess, Args: []string{"sleep", "1000"}}, "a"); err != nil {
			t.Fatal(err)
		}
	}
	a.Reconcile()
	var peak int64
	for _, m := range []string{"m1", "m2"} {
		waitFor(t, m+" running", func() bool {
			st, ok := a.machine(m)
			return ok && st.Phase == fleet.PhaseRunning
		})
		sock := filepath.Join(a.machineSockDir(m), nbdSocketName)
		for range 2 {
			cn, err := nbdclient.Dial("nbd+unix:///v-"+m+"?socket="+sock, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer cn.Close()
			// 16 READs of 16 MiB sent at once; the replies are never read.
			if err := cn.SendReads(16, 16*mib); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "the stalled clients of both machines to reach the agent's budget", func() bool {
		used := a.nbdBudget.Used()
		peak = max(peak, used)
		if used > budget {
			t.Fatalf("NBD payload buffers %d bytes above the agent's budget %d", used, budget)
		}
		return used > budget-32*mib
	})
	if peak > budget {
		t.Fatalf("peak %d above the budget %d", peak, budget)
	}
}
