package agent

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/urldisk/urldisk/internal/fleet"
)

// The HTTP API. Every request needs "Authorization: Bearer <token>";
// without it, or with a wrong token, the answer is 401 and nothing
// happens. Bodies and answers are JSON; errors are {"error": "..."}.
//
//	GET    /v1/status                    this agent's heartbeat document, fresh
//	POST   /v1/reconcile                 reconcile now (202)
//	GET    /v1/machines                  newest placement of every machine
//	POST   /v1/machines                  run: {"name", "spec", "host"?} → 201 placement
//	POST   /v1/machines/{name}/stop      → placement
//	POST   /v1/machines/{name}/start     → placement
//	POST   /v1/machines/{name}/migrate   {"host"} → placement
//	DELETE /v1/machines/{name}           → placement
//	GET    /metrics                      Prometheus metrics
//
// A change that is already in effect answers 200 with the current
// placement and "unchanged": true.

// RunRequest is the body of POST /v1/machines.
type RunRequest struct {
	Name string     `json:"name"`
	Spec fleet.Spec `json:"spec"`
	// Host to run on; "" picks the least loaded live host.
	Host string `json:"host,omitempty"`
}

// MigrateRequest is the body of POST /v1/machines/{name}/migrate.
type MigrateRequest struct {
	Host string `json:"host"`
}

// PlacementReply answers the machine changes.
type PlacementReply struct {
	Placement *fleet.Placement `json:"placement"`
	Unchanged bool             `json:"unchanged,omitempty"`
}

// ErrorReply is every error's body.
type ErrorReply struct {
	Error string `json:"error"`
}

const maxBody = 1 << 20

func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.status(false))
	})
	mux.HandleFunc("POST /v1/reconcile", func(w http.ResponseWriter, r *http.Request) {
		a.Reconcile()
		writeJSON(w, http.StatusAccepted, struct{}{})
	})
	mux.HandleFunc("GET /v1/machines", func(w http.ResponseWriter, r *http.Request) {
		ps, err := a.fleet.Placements(r.Context())
		if err != nil {
			a.writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ps)
	})
	mux.HandleFunc("POST /v1/machines", func(w http.ResponseWriter, r *http.Request) {
		var req RunRequest
		if !readJSON(w, r, &req) {
			return
		}
		p, err := a.ops.Run(r.Context(), req.Name, req.Spec, req.Host)
		a.reply(w, r, p, err, http.StatusCreated)
	})
	mux.HandleFunc("POST /v1/machines/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		p, err := a.ops.Stop(r.Context(), r.PathValue("name"))
		a.reply(w, r, p, err, http.StatusOK)
	})
	mux.HandleFunc("POST /v1/machines/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		p, err := a.ops.Start(r.Context(), r.PathValue("name"))
		a.reply(w, r, p, err, http.StatusOK)
	})
	mux.HandleFunc("POST /v1/machines/{name}/migrate", func(w http.ResponseWriter, r *http.Request) {
		var req MigrateRequest
		if !readJSON(w, r, &req) {
			return
		}
		p, err := a.ops.Migrate(r.Context(), r.PathValue("name"), req.Host)
		a.reply(w, r, p, err, http.StatusOK)
	})
	mux.HandleFunc("DELETE /v1/machines/{name}", func(w http.ResponseWriter, r *http.Request) {
		p, err := a.ops.Remove(r.Context(), r.PathValue("name"))
		a.reply(w, r, p, err, http.StatusOK)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	return a.authenticate(mux)
}

// authenticate refuses requests without the right bearer token. The
// comparison is of SHA-256 digests in constant time, so neither the
// token's bytes nor its length leak through timing.
func (a *Agent) authenticate(next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(a.cfg.Token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			a.log.Warn("API request refused: missing or wrong token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="urldisk-agent"`)
			writeJSON(w, http.StatusUnauthorized, ErrorReply{Error: "missing or wrong API token (send Authorization: Bearer <token>)"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// reply answers a placement change and, if something changed, has the
// agents concerned reconcile at once.
func (a *Agent) reply(w http.ResponseWriter, r *http.Request, p *fleet.Placement, err error, okStatus int) {
	switch {
	case errors.Is(err, fleet.ErrNoChange):
		writeJSON(w, http.StatusOK, PlacementReply{Placement: p, Unchanged: true})
	case err != nil:
		a.writeError(w, err)
	default:
		hosts := []string{p.Host, a.cfg.ID}
		if p.From != "" {
			hosts = append(hosts, p.From)
		}
		a.nudge(r.Context(), hosts...)
		writeJSON(w, okStatus, PlacementReply{Placement: p})
	}
}

// statusOf maps errors to HTTP statuses.
func statusOf(err error) int {
	switch {
	case errors.Is(err, fleet.ErrInvalid), errors.Is(err, fleet.ErrUnknownHost):
		return http.StatusBadRequest
	case errors.Is(err, fleet.ErrNoMachine):
		return http.StatusNotFound
	case errors.Is(err, fleet.ErrMachineExists), errors.Is(err, fleet.ErrVolumeInUse),
		errors.Is(err, fleet.ErrHostDead), errors.Is(err, fleet.ErrNoHosts), errors.Is(err, fleet.ErrContended):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func (a *Agent) writeError(w http.ResponseWriter, err error) {
	code := statusOf(err)
	if code == http.StatusInternalServerError {
		a.log.Error("API request failed", "err", err)
	}
	writeJSON(w, code, ErrorReply{Error: err.Error()})
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, ErrorReply{Error: fmt.Sprintf("bad request body: %v", err)})
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
