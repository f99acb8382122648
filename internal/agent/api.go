package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/urldisk/urldisk/internal/fleet"
)

// The HTTP API. Every request needs "Authorization: Bearer <token>";
// without it, or with an unknown token, the answer is 401 and nothing
// happens; a token whose scope (auth.go) does not allow the request gets
// 403. Every request that may change something is logged ("audit").
// Bodies and answers are JSON; errors are {"error": "..."}.
//
//	GET    /v1/status                    read     this agent's heartbeat document, fresh
//	POST   /v1/reconcile                 machine  reconcile now (202)
//	GET    /v1/machines                  read     newest placement of every machine
//	POST   /v1/machines                  machine  run: {"name", "spec", "host"?} → 201 placement
//	POST   /v1/machines/{name}/stop      machine  → placement
//	POST   /v1/machines/{name}/start     machine  → placement
//	POST   /v1/machines/{name}/migrate   machine  {"host"} → placement
//	DELETE /v1/machines/{name}           machine  → placement
//	GET    /metrics                      read     Prometheus metrics (unauthenticated on
//	                                              Config.MetricsListen instead, if set)
//
// Tokens limited to machines see and change only those.
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
		if !authorize(w, r, ScopeRead, "") {
			return
		}
		st := a.status(false)
		if t := principal(r.Context()); len(t.Machines) > 0 {
			ms := st.Machines[:0:0]
			for _, m := range st.Machines {
				if t.allows(m.Name) {
					ms = append(ms, m)
				}
			}
			st.Machines = ms
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /v1/reconcile", a.audited(func(w http.ResponseWriter, r *http.Request) {
		if !authorize(w, r, ScopeMachine, "") {
			return
		}
		a.Reconcile()
		writeJSON(w, http.StatusAccepted, struct{}{})
	}))
	mux.HandleFunc("GET /v1/machines", func(w http.ResponseWriter, r *http.Request) {
		if !authorize(w, r, ScopeRead, "") {
			return
		}
		ps, err := a.fleet.Placements(r.Context())
		if err != nil {
			a.writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, visible(r, ps))
	})
	mux.HandleFunc("POST /v1/machines", a.audited(func(w http.ResponseWriter, r *http.Request) {
		var req RunRequest
		if !authorize(w, r, ScopeMachine, "") || !readJSON(w, r, &req) {
			return
		}
		auditMachine(w, req.Name)
		if !authorize(w, r, ScopeMachine, req.Name) {
			return
		}
		p, err := a.ops.Run(r.Context(), req.Name, req.Spec, req.Host)
		a.reply(w, r, p, err, http.StatusCreated)
	}))
	mux.HandleFunc("POST /v1/machines/{name}/stop", a.machineOp(func(r *http.Request, name string) (*fleet.Placement, error) {
		return a.ops.Stop(r.Context(), name)
	}))
	mux.HandleFunc("POST /v1/machines/{name}/start", a.machineOp(func(r *http.Request, name string) (*fleet.Placement, error) {
		return a.ops.Start(r.Context(), name)
	}))
	mux.HandleFunc("DELETE /v1/machines/{name}", a.machineOp(func(r *http.Request, name string) (*fleet.Placement, error) {
		return a.ops.Remove(r.Context(), name)
	}))
	mux.HandleFunc("POST /v1/machines/{name}/migrate", a.audited(func(w http.ResponseWriter, r *http.Request) {
		var req MigrateRequest
		if !authorize(w, r, ScopeMachine, r.PathValue("name")) || !readJSON(w, r, &req) {
			return
		}
		p, err := a.ops.Migrate(r.Context(), r.PathValue("name"), req.Host)
		a.reply(w, r, p, err, http.StatusOK)
	}))
	if a.cfg.MetricsListen == "" {
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
			if authorize(w, r, ScopeRead, "") {
				a.metricsHandler().ServeHTTP(w, r)
			}
		})
	}
	return a.authenticate(mux)
}

// machineOp is a bodiless change of the machine the path names: it needs
// the machine scope on that machine and is audited.
func (a *Agent) machineOp(op func(r *http.Request, name string) (*fleet.Placement, error)) http.HandlerFunc {
	return a.audited(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !authorize(w, r, ScopeMachine, name) {
			return
		}
		p, err := op(r, name)
		a.reply(w, r, p, err, http.StatusOK)
	})
}

// metricsHandler serves the agent's Prometheus metrics.
func (a *Agent) metricsHandler() http.Handler {
	return promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{})
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
