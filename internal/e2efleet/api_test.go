package e2efleet

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/objstore"
)

// fleetKeys lists every object under fleet/machines/ and fleet/drain/.
func (e *env) fleetKeys() []string {
	e.t.Helper()
	var keys []string
	for _, prefix := range []string{fleet.MachinesPrefix, fleet.DrainPrefix, fleet.AcksPrefix} {
		if err := e.store.List(context.Background(), prefix, func(oi objstore.ObjectInfo) error {
			keys = append(keys, oi.Key)
			return nil
		}); err != nil {
			e.t.Fatal(err)
		}
	}
	return keys
}

// TestFleetAPIAuthAndBadSpecs: every API request without the token, or
// with a wrong one, is refused with 401 and changes nothing; bad specs get
// clear errors from the API and the CLI.
func TestFleetAPIAuthAndBadSpecs(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("h1")
	e.startAgent("h2")
	vol := e.volumeURL("v1")
	e.mustCLI("create", vol, "--size", "16M")
	e.mustCLI("create", e.volumeURL("v2"), "--size", "16M")
	good := "Bearer " + e.token
	runBody := func(name, runtime, volume, host string) string {
		b, _ := json.Marshal(map[string]any{"name": name, "host": host, "spec": map[string]any{"volume": volume, "runtime": runtime, "args": []string{"sleep", "1000"}}})
		return string(b)
	}

	// A real machine, so the mutating calls below have something to act on.
	if code, body := api(t, "POST", a.api+"/v1/machines", good, runBody("m1", "process", vol, "h1")); code != http.StatusCreated {
		t.Fatalf("run with the token: %d %s", code, body)
	}
	before := e.fleetKeys()

	wrongs := map[string]string{
		"no header":         "",
		"wrong token":       "Bearer not-the-token",
		"same length":       "Bearer " + strings.Repeat("x", len(e.token)),
		"token as prefix":   "Bearer " + e.token + "x",
		"no Bearer":         e.token,
		"basic auth scheme": "Basic " + e.token,
	}
	calls := []struct{ method, path, body string }{
		{"GET", "/v1/status", ""},
		{"GET", "/v1/machines", ""},
		{"GET", "/metrics", ""},
		{"POST", "/v1/reconcile", ""},
		{"POST", "/v1/machines", runBody("m2", "process", vol, "")},
		{"POST", "/v1/machines/m1/stop", ""},
		{"POST", "/v1/machines/m1/migrate", `{"host":"h2"}`},
		{"DELETE", "/v1/machines/m1", ""},
	}
	for what, auth := range wrongs {
		for _, c := range calls {
			code, body := api(t, c.method, a.api+c.path, auth, c.body)
			if code != http.StatusUnauthorized || !strings.Contains(body, "API token") {
				t.Errorf("%s %s with %s: %d %s, want 401", c.method, c.path, what, code, body)
			}
			if strings.Contains(body, e.token) {
				t.Errorf("%s %s: the answer echoes the token", c.method, c.path)
			}
		}
	}
	if after := e.fleetKeys(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("unauthorised requests changed the fleet:\nbefore %v\nafter  %v", before, after)
	}
	if p := e.placement("m1"); p.Version != 1 || p.State != fleet.Running || p.Host != "h1" {
		t.Fatalf("m1 changed: %+v", p)
	}

	// Bad specs through the API.
	for _, tc := range []struct {
		what, body string
		code       int
		msg        string
	}{
		{"unknown runtime", runBody("m3", "docker", vol, ""), 400, `unknown runtime "docker"`},
		{"missing volume", runBody("m3", "process", e.volumeURL("nope"), ""), 400, "volume not found"},
		{"no volume", runBody("m3", "process", "", ""), 400, "missing volume URL"},
		{"unknown host", runBody("m3", "process", e.volumeURL("v2"), "h9"), 400, `unknown host "h9"`},
		{"bad name", runBody("m 3", "process", vol, ""), 400, "machine"},
		{"volume in use", runBody("m3", "process", vol, ""), 409, `machine "m1"`},
		{"name taken", runBody("m1", "process", e.volumeURL("v2"), ""), 409, "already exists"},
		{"unknown field", `{"name":"m3","spec":{"volume":"x","runtime":"process"},"hots":"h1"}`, 400, "unknown field"},
		{"not JSON", `{`, 400, "bad request body"},
	} {
		code, body := api(t, "POST", a.api+"/v1/machines", good, tc.body)
		var er struct{ Error string }
		json.Unmarshal([]byte(body), &er)
		if code != tc.code || !strings.Contains(er.Error, tc.msg) {
			t.Errorf("%s: %d %s; want %d mentioning %q", tc.what, code, body, tc.code, tc.msg)
		}
	}
	if code, body := api(t, "POST", a.api+"/v1/machines/m1/migrate", good, `{"host":"h9"}`); code != 400 || !strings.Contains(body, "unknown host") {
		t.Errorf("migrate to an unknown host: %d %s", code, body)
	}
	if code, body := api(t, "POST", a.api+"/v1/machines/nope/stop", good, ""); code != 404 || !strings.Contains(body, "no such machine") {
		t.Errorf("stop an unknown machine: %d %s", code, body)
	}
	if code, body := api(t, "GET", a.api+"/metrics", good, ""); code != 200 || !strings.Contains(body, "urldisk_agent_machines{phase=\"running\"}") {
		t.Errorf("metrics with the token: %d\n%s", code, body)
	}
	if code, body := api(t, "GET", a.api+"/v1/status", good, ""); code != 200 || !strings.Contains(body, `"host": "h1"`) {
		t.Errorf("status with the token: %d %s", code, body)
	}

	// The same through the CLI.
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"machine", "run", "m3", "--volume", vol, "--runtime", "lxc", "--", "true"}, `unknown runtime "lxc"`},
		{[]string{"machine", "run", "m3", "--volume", e.volumeURL("nope"), "--runtime", "process", "--", "true"}, "volume not found"},
		{[]string{"machine", "run", "m3", "--runtime", "process", "--", "true"}, "missing volume URL"},
		{[]string{"machine", "run", "m3", "--volume", e.volumeURL("v2"), "--runtime", "process", "--host", "h9", "--", "true"}, `unknown host "h9"`},
		{[]string{"machine", "run", "m3", "--volume", e.volumeURL("v2"), "--runtime", "qemu"}, "needs a kernel"},
		{[]string{"migrate", "m1", "h9"}, `unknown host "h9"`},
		{[]string{"migrate", "nope", "h2"}, "no such machine"},
		{[]string{"drain", "h9"}, `unknown host "h9"`},
	} {
		r := e.cli(tc.args...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("want failure mentioning %q:\n%s", tc.msg, r)
		}
	}
	if r := e.cli("machine", "ls", "--fleet", ""); r.code != 0 || !strings.Contains(r.stdout, "m1") {
		t.Errorf("machine ls with $URLDISK_FLEET:\n%s", r)
	}
	r := e.cli("hosts")
	if r.code != 0 || !strings.Contains(r.stdout, "h1") || !strings.Contains(r.stdout, "h2") {
		t.Errorf("hosts:\n%s", r)
	}
	e.mustCLI("machine", "rm", "m1")
	if p := e.placement("m1"); p.State != fleet.Deleted {
		t.Fatalf("rm: %+v", p)
	}
}
