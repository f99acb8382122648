// Package etcdcluster starts a real 3-member etcd cluster on loopback in the
// test's process (go.etcd.io/etcd/server/v3/embed), each member with its own
// data directory and ports, for tests of the etcd coordination.
package etcdcluster

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Cluster is a running cluster; Cleanup stops what is left of it.
type Cluster struct {
	t       testing.TB
	members []*embed.Etcd
	stops   []func() // close member i, once
	// Clients are the members' client addresses (HOST:PORT).
	Clients []string
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start starts 3 members and waits until they serve.
func Start(t testing.TB) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	type ports struct{ peer, client int }
	var ps []ports
	var initial []string
	for i := range 3 {
		p := ports{freePort(t), freePort(t)}
		ps = append(ps, p)
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, p.peer))
	}
	for i, p := range ps {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = t.TempDir()
		peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", p.peer)}
		client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", p.client)}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "urldisk-test"
		cfg.LogLevel = "error"
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			t.Fatalf("start etcd member %d: %v", i, err)
		}
		c.members = append(c.members, e)
		c.stops = append(c.stops, sync.OnceFunc(e.Close))
		c.Clients = append(c.Clients, client.Host)
		t.Cleanup(c.stops[i])
	}
	for i, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(60 * time.Second):
			t.Fatalf("etcd member %d not ready after 60s", i)
		}
	}
	return c
}

// URL is the --coord URL of the cluster with a key prefix.
func (c *Cluster) URL(prefix string) string {
	return "etcd://" + strings.Join(c.Clients, ",") + "/" + prefix
}

// KillLeader stops the member that leads and returns its index.
func (c *Cluster) KillLeader() int {
	c.t.Helper()
	for i, e := range c.members {
		if e.Server.Leader() == e.Server.MemberID() {
			c.stops[i]()
			return i
		}
	}
	c.t.Fatal("etcd cluster has no leader")
	return -1
}
