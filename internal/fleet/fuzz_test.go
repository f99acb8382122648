package fleet

import (
	"testing"
	"time"
)

// FuzzDecode feeds arbitrary bytes to every fleet decoder: none may panic,
// and whatever DecodePlacement accepts must re-encode and decode the same.
func FuzzDecode(f *testing.F) {
	p := &Placement{Name: "m", Version: 3, Spec: Spec{Volume: "mem:///v", Runtime: RuntimeProcess, Args: []string{"x"}},
		Host: "h", State: Running, Reason: ReasonRun, Time: time.Unix(1, 0).UTC(), Nonce: "n"}
	if b, err := EncodePlacement(p); err == nil {
		f.Add(b)
	}
	if b, err := EncodeHeartbeat(&Heartbeat{Host: "h", Seq: 1, Machines: []MachineStatus{{Name: "m", Phase: PhaseRunning}}}); err == nil {
		f.Add(b)
	}
	if b, err := EncodeAck(&Ack{Name: "m", Version: 2, Host: "h"}); err == nil {
		f.Add(b)
	}
	if b, err := EncodeTrace(&Trace{Name: "m", PageSize: 65536, Pages: []uint64{1}}); err == nil {
		f.Add(b)
	}
	f.Add([]byte("urldisk-fleet-machine v1 crc32c=00000000\n{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		DecodeHeartbeat(b)
		DecodeAck(b)
		DecodeTrace(b)
		p, err := DecodePlacement(b)
		if err != nil {
			return
		}
		b2, err := EncodePlacement(p)
		if err != nil {
			t.Fatalf("decoded placement does not re-encode: %v", err)
		}
		q, err := DecodePlacement(b2)
		if err != nil || q.Version != p.Version || q.Name != p.Name || !q.Spec.Equal(&p.Spec) {
			t.Fatalf("re-encoded placement differs: %+v %v", q, err)
		}
	})
}
