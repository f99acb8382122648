package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
	"github.com/urldisk/urldisk/internal/testutil/testpki"
)

func digestLine(name, scope, token, machines string) string {
	sum := sha256.Sum256([]byte(token))
	return strings.TrimSpace(fmt.Sprintf("%s %s sha256:%s %s", name, scope, hex.EncodeToString(sum[:]), machines))
}

// A tokens file holds digests, never tokens; every malformed line is an
// error naming the file and line, and never echoes what may be a token.
func TestParseTokens(t *testing.T) {
	good := strings.Join([]string{
		"# comment", "",
		digestLine("ci", "read", "tok-ci-0123456789", ""),
		digestLine("web-ops", "machine", "tok-web-0123456789", "web-*,api-1"),
		digestLine("root", "admin", "tok-root-0123456789", ""),
	}, "\n")
	toks, err := ParseTokens(strings.NewReader(good), "tokens")
	if err != nil || len(toks) != 3 {
		t.Fatalf("ParseTokens = %+v, %v", toks, err)
	}
	if toks[1].Scope != ScopeMachine || !toks[1].allows("web-9") || !toks[1].allows("api-1") || toks[1].allows("db-1") || !toks[0].allows("db-1") {
		t.Fatalf("parsed %+v", toks)
	}
	const secret = "pasted-the-token-itself-0123"
	for name, c := range map[string]struct{ file, want string }{
		"fields":          {"ci read", "line 1: want NAME SCOPE"},
		"scope":           {digestLine("ci", "write", "x", ""), `unknown scope "write"`},
		"plaintext token": {"ci read " + secret, "sha256:HEX"},
		"short digest":    {"ci read sha256:abcd", "64 hex digits"},
		"bad name":        {digestLine("c/i", "read", "x", ""), `token name "c/i"`},
		"pattern":         {digestLine("ci", "read", "x", "web-["), `machine pattern "web-["`},
		"admin limited":   {digestLine("ci", "admin", "x", "web-*"), "admin token cannot be limited"},
		"dup name":        {digestLine("ci", "read", "x", "") + "\n" + digestLine("ci", "read", "y", ""), "line 2: token name \"ci\" already used on line 1"},
		"dup token":       {digestLine("a", "read", "x", "") + "\n\n" + digestLine("b", "admin", "x", ""), "line 3: the same token as line 1"},
	} {
		_, err := ParseTokens(strings.NewReader(c.file), "/etc/urldisk/tokens")
		if !errors.Is(err, ErrBadTokens) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "/etc/urldisk/tokens") {
			t.Errorf("%s: %v, want ErrBadTokens naming the file and %q", name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("%s: error echoes the token: %v", name, err)
		}
	}
	tok, line, err := NewToken("ci", ScopeMachine, []string{"web-*"})
	if err != nil || len(tok) < MinTokenLen {
		t.Fatalf("NewToken = %q, %v", tok, err)
	}
	if line != digestLine("ci", "machine", tok, "web-*") {
		t.Fatalf("NewToken line %q does not carry the token's digest", line)
	}
	if _, _, err := NewToken("root", ScopeAdmin, []string{"x"}); err == nil {
		t.Fatal("NewToken made an admin token limited to machines")
	}
}

// Scoped tokens: read sees but changes nothing; a machine token limited
// to web-* runs and stops web-* machines only and sees only them; the
// fleet token does everything. Refusals are 403 and write nothing; every
// change, allowed or refused, leaves an audit line naming the token.
func TestScopedTokens(t *testing.T) {
	const readTok, webTok = "read-token-0123456789", "web-token-0123456789"
	w := newWorld(t)
	var logs lockedbuf.Buffer
	a := w.startAgentWith("a", nil, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.Tokens = []Token{
			{Name: "ci", Scope: ScopeRead, digest: sha256.Sum256([]byte(readTok))},
			{Name: "web-ops", Scope: ScopeMachine, Machines: []string{"web-*"}, digest: sha256.Sum256([]byte(webTok))},
		}
	})
	ctx := context.Background()
	vol1, vol2 := w.createVolume("v1"), w.createVolume("v2")
	do := func(method, path, token, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, a.api+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	run := func(name, vol string) string {
		return fmt.Sprintf(`{"name":%q,"spec":{"volume":%q,"runtime":"process","args":["sleep","100"]}}`, name, vol)
	}

	for _, path := range []string{"/v1/status", "/v1/machines", "/metrics"} {
		if code, body := do("GET", path, readTok, ""); code != 200 {
			t.Fatalf("read token GET %s: %d %s", path, code, body)
		}
	}
	if code, body := do("POST", "/v1/machines", readTok, run("web-1", vol1)); code != 403 || !strings.Contains(body, `token \"ci\" has scope read`) {
		t.Fatalf("read token runs a machine: %d %s", code, body)
	}
	if code, _ := do("POST", "/v1/reconcile", readTok, ""); code != 403 {
		t.Fatalf("read token reconciles: %d", code)
	}
	if code, body := do("POST", "/v1/machines", webTok, run("db-1", vol2)); code != 403 || !strings.Contains(body, `may not act on machine \"db-1\"`) {
		t.Fatalf("web token runs db-1: %d %s", code, body)
	}
	if p, _ := w.fleet.Latest(ctx, "db-1"); p != nil {
		t.Fatalf("a refused run wrote %+v", p)
	}
	if p, _ := w.fleet.Latest(ctx, "web-1"); p != nil {
		t.Fatalf("a refused run wrote %+v", p)
	}
	if code, body := do("POST", "/v1/machines", webTok, run("web-1", vol1)); code != 201 {
		t.Fatalf("web token runs web-1: %d %s", code, body)
	}
	if code, body := do("POST", "/v1/machines", testToken, run("db-1", vol2)); code != 201 {
		t.Fatalf("fleet token runs db-1: %d %s", code, body)
	}
	for _, c := range []struct{ method, path string }{
		{"POST", "/v1/machines/db-1/stop"}, {"POST", "/v1/machines/db-1/start"},
		{"POST", "/v1/machines/db-1/migrate"}, {"DELETE", "/v1/machines/db-1"},
	} {
		if code, body := do(c.method, c.path, webTok, `{"host":"a"}`); code != 403 {
			t.Fatalf("web token %s %s: %d %s", c.method, c.path, code, body)
		}
	}
	if p, _ := w.fleet.Latest(ctx, "db-1"); p == nil || p.Version != 1 {
		t.Fatalf("db-1 changed by refused requests: %+v", p)
	}
	if code, body := do("GET", "/v1/machines", webTok, ""); code != 200 || !strings.Contains(body, `"web-1"`) || strings.Contains(body, "db-1") {
		t.Fatalf("web token lists: %d %s; want web-1 only", code, body)
	}
	waitFor(t, "both machines running", func() bool {
		st := a.status(false)
		_, ok1 := st.Machine("web-1")
		_, ok2 := st.Machine("db-1")
		return ok1 && ok2
	})
	if code, body := do("GET", "/v1/status", webTok, ""); code != 200 || !strings.Contains(body, `"web-1"`) || strings.Contains(body, "db-1") {
		t.Fatalf("web token status: %d %s; want web-1 only", code, body)
	}
	if code, body := do("POST", "/v1/machines/web-1/stop", webTok, ""); code != 200 {
		t.Fatalf("web token stops web-1: %d %s", code, body)
	}
	log := logs.String()
	for _, want := range []string{
		`msg=audit agent=a token=ci client_cert="" remote=127.0.0.1`,
		`method=POST path=/v1/machines machine=db-1 status=403`,
		`token=web-ops`, `machine=web-1 status=201`, `token=fleet`,
		`path=/v1/machines/web-1/stop machine=web-1 status=200`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("audit log lacks %q:\n%s", want, log)
		}
	}
	for _, tok := range []string{readTok, webTok, testToken} {
		if strings.Contains(log, tok) {
			t.Fatalf("a token in the log:\n%s", log)
		}
	}
}

// Mutual TLS: without a client certificate the handshake fails before any
// token is read; with one, requests go through; agents present theirs
// when they call each other.
func TestMutualTLS(t *testing.T) {
	pki := testpki.New(t)
	w := newWorld(t)
	clientCert, clientKey := filepath.Join(pki.ClientDir, "client-cert.pem"), filepath.Join(pki.ClientDir, "client-key.pem")
	mtls := func(c *Config) {
		c.TLSCert, c.TLSKey, c.TLSCA, c.TLSClientCA = pki.CertFile, pki.KeyFile, pki.CAFile, pki.CAFile
		c.TLSClientCert, c.TLSClientKey = clientCert, clientKey
	}
	a := w.startAgentWith("a", nil, mtls)
	b := w.startAgentWith("b", nil, mtls)
	ctx := context.Background()
	noCert, err := NewHTTPClient(pki.CAFile, "", "")
	if err != nil {
		t.Fatal(err)
	}
	err = (&Client{BaseURL: a.api, Token: testToken, HTTP: noCert}).Reconcile(ctx)
	var ae *APIError
	if err == nil || errors.As(err, &ae) {
		t.Fatalf("client without a certificate: %v, want a TLS handshake failure", err)
	}
	// A certificate another CA signed: refused too (verified, not just present).
	foreign := testpki.New(t)
	forged, err := NewHTTPClient(pki.CAFile, filepath.Join(foreign.ClientDir, "client-cert.pem"), filepath.Join(foreign.ClientDir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Client{BaseURL: a.api, Token: testToken, HTTP: forged}).Reconcile(ctx); err == nil || errors.As(err, &ae) {
		t.Fatalf("client with a certificate another CA signed: %v, want a TLS handshake failure", err)
	}
	withCert, err := NewHTTPClient(pki.CAFile, clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := (&Client{BaseURL: a.api, Token: testToken, HTTP: withCert}).Status(ctx); err != nil || st.Host != "a" {
		t.Fatalf("client with a certificate: %+v %v", st, err)
	}
	if st, err := (&Client{BaseURL: b.api, Token: testToken, HTTP: a.peers}).Status(ctx); err != nil || st.Host != "b" {
		t.Fatalf("agent a calling agent b: %+v %v", st, err)
	}
	if _, err := NewHTTPClient(pki.CAFile, clientCert, clientKey+".missing"); err == nil {
		t.Fatal("NewHTTPClient with a missing client key: no error")
	}
	_, err = New(Config{ID: "c", Fleet: w.store, CacheDir: filepath.Join(w.dir, "c"), Listen: "tcp:127.0.0.1:0", Token: testToken, TLSClientCA: pki.CAFile})
	if err == nil || !strings.Contains(err.Error(), "needs --tls-cert") {
		t.Fatalf("client CA without a server certificate: %v", err)
	}
}

// With MetricsListen, /metrics answers there without a token and is gone
// from the API.
func TestMetricsListener(t *testing.T) {
	w := newWorld(t)
	metricsSock := filepath.Join(w.dir, "metrics.sock")
	a := w.startAgentWith("a", nil, func(c *Config) { c.MetricsListen = "unix:" + metricsSock })
	hc := &http.Client{Transport: &http.Transport{DialContext: unixDialer(metricsSock)}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "urldisk_agent_") {
		t.Fatalf("metrics listener: %d %.200s", resp.StatusCode, body)
	}
	req, _ := http.NewRequest("GET", a.api+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/metrics on the API with a metrics listener: %d, want 404", resp.StatusCode)
	}
}
