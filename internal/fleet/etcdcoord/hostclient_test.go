package etcdcoord

import (
	"context"
	"errors"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// errHostClosed is what a simulated host's client answers once the host
// was killed, as a closed real client would refuse.
var errHostClosed = errors.New("etcd client of a killed simulated host: closed")

// hostConn is one simulated host's share of a client that several
// simulated hosts share: a thousand real clients (gRPC connections and
// keep-alive streams of their own) cost the simulator's process more CPU
// than the cluster serving them. It counts the host's
// requests as the etcd server sees them: every KV call and transaction,
// every lease call, every keep-alive a KeepAlive stream carries (one per
// response: the lessor sends one per lease per TTL/3), and every watch
// created.
type hostConn struct {
	shared *clientv3.Client
	ctx    context.Context // the host's client's: done once it is closed
	n      *atomic.Int64
}

// hostClient returns a client for one simulated host over shared,
// counting into n. Closing it is the host's crash: its calls, watches and
// keep-alives (the election session's) stop, nothing is revoked or
// resigned, and shared stays open for the other hosts.
func hostClient(shared *clientv3.Client, n *atomic.Int64) *clientv3.Client {
	cli := clientv3.NewCtxClient(context.Background())
	h := &hostConn{shared: shared, ctx: cli.Ctx(), n: n}
	cli.KV, cli.Lease, cli.Watcher = hostKV{h}, hostLease{h}, hostWatcher{h}
	return cli
}

// call counts one request and returns ctx cut off when the host is closed
// (a crash ends calls in flight too); done releases it.
func (h *hostConn) call(ctx context.Context) (context.Context, func(), error) {
	if h.ctx.Err() != nil {
		return nil, nil, errHostClosed
	}
	h.n.Add(1)
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(h.ctx, cancel)
	return ctx, func() { stop(); cancel() }, nil
}

type hostKV struct{ h *hostConn }

func (k hostKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	ctx, done, err := k.h.call(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return k.h.shared.Put(ctx, key, val, opts...)
}

func (k hostKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	ctx, done, err := k.h.call(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return k.h.shared.Get(ctx, key, opts...)
}

func (k hostKV) GetStream(ctx context.Context, key string, opts ...clientv3.OpOption) (clientv3.GetStreamChan, error) {
	return nil, errors.New("simulated host client: GetStream is not used by etcdcoord")
}

func (k hostKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	ctx, done, err := k.h.call(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return k.h.shared.Delete(ctx, key, opts...)
}

func (k hostKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	ctx, done, err := k.h.call(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return k.h.shared.Compact(ctx, rev, opts...)
}

func (k hostKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	ctx, done, err := k.h.call(ctx)
	if err != nil {
		return clientv3.OpResponse{}, err
	}
	defer done()
	return k.h.shared.Do(ctx, op)
}

// Txn is counted when committed: building one sends nothing.
func (k hostKV) Txn(ctx context.Context) clientv3.Txn { return &hostTxn{h: k.h, ctx: ctx} }

type hostTxn struct {
	h                *hostConn
	ctx              context.Context
	cmps             []clientv3.Cmp
	thenOps, elseOps []clientv3.Op
}

func (t *hostTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.cmps = append(t.cmps, cs...); return t }
func (t *hostTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.thenOps = append(t.thenOps, ops...)
	return t
}
func (t *hostTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.elseOps = append(t.elseOps, ops...)
	return t
}

func (t *hostTxn) Commit() (*clientv3.TxnResponse, error) {
	ctx, done, err := t.h.call(t.ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return t.h.shared.Txn(ctx).If(t.cmps...).Then(t.thenOps...).Else(t.elseOps...).Commit()
}

type hostLease struct{ h *hostConn }

func (l hostLease) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	ctx, done, err := l.h.call(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return l.h.shared.Grant(ctx, ttl)
}

func (l hostLease) Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	ctx, done, err := l.h.call(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return l.h.shared.Revoke(ctx, id)
}

func (l hostLease) TimeToLive(ctx context.Context, id clientv3.LeaseID, opts ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error) {
	ctx, done, err := l.h.call(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return l.h.shared.TimeToLive(ctx, id, opts...)
}

func (l hostLease) Leases(ctx context.Context) (*clientv3.LeaseLeasesResponse, error) {
	ctx, done, err := l.h.call(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return l.h.shared.Leases(ctx)
}

func (l hostLease) KeepAliveOnce(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	ctx, done, err := l.h.call(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return l.h.shared.KeepAliveOnce(ctx, id)
}

// KeepAlive counts each keep-alive answered (the shared lessor sends them
// on its one stream); they stop when ctx ends or the host is closed, and
// the lease then expires as a crashed host's would.
func (l hostLease) KeepAlive(ctx context.Context, id clientv3.LeaseID) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	if l.h.ctx.Err() != nil {
		return nil, errHostClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.h.ctx, cancel)
	in, err := l.h.shared.KeepAlive(ctx, id)
	if err != nil {
		stop()
		cancel()
		return nil, err
	}
	out := make(chan *clientv3.LeaseKeepAliveResponse, 1)
	go func() {
		defer close(out)
		defer cancel()
		defer stop()
		for r := range in {
			l.h.n.Add(1)
			out <- r
		}
	}()
	return out, nil
}

// Close closes nothing shared: closing the host's client already ended
// its context.
func (hostLease) Close() error { return nil }

type hostWatcher struct{ h *hostConn }

// Watch counts the watch's creation (the shared client multiplexes it on
// one stream); its events are not requests. A closed host's watches end.
func (w hostWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	if w.h.ctx.Err() != nil {
		ch := make(chan clientv3.WatchResponse)
		close(ch)
		return ch
	}
	w.h.n.Add(1)
	ctx, cancel := context.WithCancel(ctx)
	// The registration lives until the host closes or ctx ends; a host
	// opens a handful of watches in a run.
	context.AfterFunc(w.h.ctx, cancel)
	return w.h.shared.Watch(ctx, key, opts...)
}

func (w hostWatcher) RequestProgress(ctx context.Context) error {
	ctx, done, err := w.h.call(ctx)
	if err != nil {
		return err
	}
	defer done()
	return w.h.shared.RequestProgress(ctx)
}

func (hostWatcher) Close() error { return nil }
