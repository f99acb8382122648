// Package etcdcluster starts a real 3-member etcd cluster on loopback in the
// test's process (go.etcd.io/etcd/server/v3/embed), each member with its own
// data directory and ports, for tests of the etcd coordination.
package etcdcluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/urldisk/urldisk/internal/testutil/testpki"
)

// Cluster is a running cluster; Cleanup stops what is left of it.
type Cluster struct {
	t       testing.TB
	members []*embed.Etcd
	stops   []func() // close member i, once
	// Clients are the members' client addresses (HOST:PORT).
	Clients []string
	pki     *testpki.PKI
}

// Options choose how the cluster serves its clients.
type Options struct {
	// PKI, if set, makes the members serve clients over TLS with its
	// server certificate and require a client certificate its CA signed.
	PKI *testpki.PKI
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

// Start starts 3 members serving plain HTTP and waits until they serve.
func Start(t testing.TB) *Cluster {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith starts 3 members as opts says and waits until they serve.
func StartWith(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t, pki: opts.PKI}
	clientScheme := "http"
	if opts.PKI != nil {
		clientScheme = "https"
	}
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
		client := url.URL{Scheme: clientScheme, Host: fmt.Sprintf("127.0.0.1:%d", p.client)}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "urldisk-test"
		cfg.LogLevel = "error"
		if opts.PKI != nil {
			cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = opts.PKI.CertFile, opts.PKI.KeyFile
			cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = opts.PKI.CAFile, true
		}
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

// URL is the --coord URL of the cluster with a key prefix; with TLS it
// names the CA and the PKI's client certificate.
func (c *Cluster) URL(prefix string) string {
	u := "etcd://" + strings.Join(c.Clients, ",") + "/" + prefix
	if c.pki != nil {
		u += "?" + c.TLSQuery()
	}
	return u
}

// TLSQuery is the URL options naming the CA and the client certificate.
func (c *Cluster) TLSQuery() string {
	return url.Values{
		"cacert": {c.pki.CAFile},
		"cert":   {filepath.Join(c.pki.ClientDir, "client-cert.pem")},
		"key":    {filepath.Join(c.pki.ClientDir, "client-key.pem")},
	}.Encode()
}

// client is a root client of the cluster (before auth is on).
func (c *Cluster) client() *clientv3.Client {
	c.t.Helper()
	cfg := clientv3.Config{DialTimeout: 5 * time.Second}
	for _, h := range c.Clients {
		cfg.Endpoints = append(cfg.Endpoints, "http://"+h)
	}
	if c.pki != nil {
		cert, err := tls.LoadX509KeyPair(filepath.Join(c.pki.ClientDir, "client-cert.pem"), filepath.Join(c.pki.ClientDir, "client-key.pem"))
		if err != nil {
			c.t.Fatal(err)
		}
		cfg.TLS = &tls.Config{RootCAs: c.pki.Pool, Certificates: []tls.Certificate{cert}}
		for i := range cfg.Endpoints {
			cfg.Endpoints[i] = "https://" + c.Clients[i]
		}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return cli
}

// EnableAuth turns etcd authentication on with a root user and a user
// whose role may read and write only keys under prefix (as an operator
// would give the fleet), both with password.
func (c *Cluster) EnableAuth(user, password, prefix string) {
	c.t.Helper()
	cli := c.client()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := prefix
	steps := []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "fleet"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "fleet", key, clientv3.GetPrefixRangeEnd(key), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, user, password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, user, "fleet"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			c.t.Fatalf("enable etcd auth, step %d: %v", i, err)
		}
	}
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

// StopAll stops every member still running: the cluster is gone for its
// clients.
func (c *Cluster) StopAll() {
	for _, stop := range c.stops {
		stop()
	}
}
