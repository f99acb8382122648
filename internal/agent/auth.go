package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/urldisk/urldisk/internal/fleet"
)

// Scope is what an API token may do. Scopes are ordered: each allows
// everything the ones below it do.
type Scope int

const (
	// ScopeRead reads status, placements and metrics.
	ScopeRead Scope = iota + 1
	// ScopeMachine also runs, stops, starts, migrates and removes
	// machines (those its token names, if it names any) and asks for a
	// reconcile.
	ScopeMachine
	// ScopeAdmin is everything: the fleet token agents share and use to
	// reach each other.
	ScopeAdmin
)

var scopeNames = map[Scope]string{ScopeRead: "read", ScopeMachine: "machine", ScopeAdmin: "admin"}

func (s Scope) String() string {
	if n, ok := scopeNames[s]; ok {
		return n
	}
	return fmt.Sprintf("scope(%d)", int(s))
}

// ParseScope parses "read", "machine" or "admin".
func ParseScope(s string) (Scope, error) {
	for sc, n := range scopeNames {
		if s == n {
			return sc, nil
		}
	}
	return 0, fmt.Errorf("unknown scope %q: want read, machine or admin", s)
}

// Token is one API token the agent accepts. The agent keeps only its
// SHA-256 digest: a tokens file holds no secret.
type Token struct {
	Name  string
	Scope Scope
	// Machines, if not empty, limits the token to machines whose name
	// matches one of these path.Match patterns ("web-*"): it sees only
	// them and may change only them.
	Machines []string
	digest   [sha256.Size]byte
}

// allows reports whether t may act on machine name.
func (t *Token) allows(name string) bool {
	if len(t.Machines) == 0 {
		return true
	}
	for _, p := range t.Machines {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// ErrBadTokens is wrapped by errors about a tokens file.
var ErrBadTokens = errors.New("bad tokens file")

var tokenName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ParseTokens reads a tokens file: one token per line,
//
//	NAME SCOPE sha256:HEX [PATTERN,PATTERN...]
//
// where HEX is the SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`,
// or what `urldisk agent-token` prints) and the patterns limit it to
// machines. Blank lines and lines starting with # are ignored. what names
// the source in errors.
func ParseTokens(r io.Reader, what string) ([]Token, error) {
	var toks []Token
	names := map[string]int{}
	digests := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		t, err := parseTokenLine(line)
		if err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %v", ErrBadTokens, what, n, err)
		}
		if prev, dup := names[t.Name]; dup {
			return nil, fmt.Errorf("%w: %s line %d: token name %q already used on line %d", ErrBadTokens, what, n, t.Name, prev)
		}
		if prev, dup := digests[t.digest]; dup {
			return nil, fmt.Errorf("%w: %s line %d: the same token as line %d", ErrBadTokens, what, n, prev)
		}
		names[t.Name], digests[t.digest] = n, n
		toks = append(toks, t)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return toks, nil
}

func parseTokenLine(line string) (Token, error) {
	f := strings.Fields(line)
	if len(f) < 3 || len(f) > 4 {
		return Token{}, fmt.Errorf("want NAME SCOPE sha256:HEX [MACHINE-PATTERNS], got %d fields", len(f))
	}
	t := Token{Name: f[0]}
	if !tokenName.MatchString(t.Name) {
		return Token{}, fmt.Errorf("token name %q: want 1-64 characters of [A-Za-z0-9._-]", t.Name)
	}
	var err error
	if t.Scope, err = ParseScope(f[1]); err != nil {
		return Token{}, err
	}
	h, ok := strings.CutPrefix(f[2], "sha256:")
	if !ok {
		// Never echo the field: it may be a token pasted by mistake.
		return Token{}, errors.New("third field must be sha256:HEX, the token's digest (the file holds no tokens)")
	}
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size {
		return Token{}, errors.New("third field: want sha256: and 64 hex digits")
	}
	copy(t.digest[:], b)
	if len(f) == 4 {
		for _, p := range strings.Split(f[3], ",") {
			if _, err := path.Match(p, ""); err != nil || p == "" {
				return Token{}, fmt.Errorf("machine pattern %q: not a valid pattern", p)
			}
			t.Machines = append(t.Machines, p)
		}
		if t.Scope == ScopeAdmin {
			return Token{}, errors.New("an admin token cannot be limited to machines")
		}
	}
	return t, nil
}

// ReadTokensFile reads a tokens file (see ParseTokens).
func ReadTokensFile(name string) ([]Token, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("read tokens file: %w", err)
	}
	defer f.Close()
	return ParseTokens(f, name)
}

// NewToken returns a fresh random token (43 characters) and its line for
// a tokens file.
func NewToken(name string, scope Scope, machines []string) (token, line string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	token = base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(token))
	line = fmt.Sprintf("%s %s sha256:%x", name, scope, sum)
	if len(machines) > 0 {
		line += " " + strings.Join(machines, ",")
	}
	if _, err := parseTokenLine(line); err != nil {
		return "", "", err
	}
	return token, line, nil
}

// principalKey is the context key of the authenticated token.
type principalKey struct{}

// principal is the token a request authenticated with.
func principal(ctx context.Context) *Token {
	t, _ := ctx.Value(principalKey{}).(*Token)
	return t
}

// tokens returns every token the agent accepts: the fleet token (admin)
// and the configured scoped ones.
func (c *Config) tokens() []Token {
	toks := []Token{{Name: "fleet", Scope: ScopeAdmin, digest: sha256.Sum256([]byte(c.Token))}}
	return append(toks, c.Tokens...)
}

// authenticate refuses requests without a known bearer token and puts the
// token in the request's context. Every configured digest is compared, in
// constant time, whatever matches: neither which token matched nor a
// token's bytes or length leak through timing. Tokens are accepted only
// in the Authorization header, never in a query string (which proxies and
// logs keep).
func (a *Agent) authenticate(next http.Handler) http.Handler {
	toks := a.cfg.tokens()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		match := -1
		for i := range toks {
			if subtle.ConstantTimeCompare(sum[:], toks[i].digest[:]) == 1 {
				match = i
			}
		}
		if !ok || match < 0 {
			a.log.Warn("API request refused: missing or wrong token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="urldisk-agent"`)
			writeJSON(w, http.StatusUnauthorized, ErrorReply{Error: "missing or wrong API token (send Authorization: Bearer <token>)"})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, &toks[match])))
	})
}

// authorize answers 403 and returns false unless the request's token has
// scope need and, if machine is not "", may act on that machine.
func authorize(w http.ResponseWriter, r *http.Request, need Scope, machine string) bool {
	t := principal(r.Context())
	switch {
	case t == nil:
		writeJSON(w, http.StatusUnauthorized, ErrorReply{Error: "missing API token"})
		return false
	case t.Scope < need:
		writeJSON(w, http.StatusForbidden, ErrorReply{Error: fmt.Sprintf("token %q has scope %s; %s %s needs %s", t.Name, t.Scope, r.Method, r.URL.Path, need)})
		return false
	case machine != "" && !t.allows(machine):
		writeJSON(w, http.StatusForbidden, ErrorReply{Error: fmt.Sprintf("token %q may not act on machine %q (it is limited to %s)", t.Name, machine, strings.Join(t.Machines, ","))})
		return false
	}
	return true
}

// visible filters placements (by machine name) to those the request's
// token may see.
func visible(r *http.Request, ps map[string]*fleet.Placement) map[string]*fleet.Placement {
	t := principal(r.Context())
	if t == nil || len(t.Machines) == 0 {
		return ps
	}
	out := map[string]*fleet.Placement{}
	for name, p := range ps {
		if t.allows(name) {
			out[name] = p
		}
	}
	return out
}

// statusWriter remembers the status code of an answer, for the audit log.
type statusWriter struct {
	http.ResponseWriter
	code    int
	machine string
}

// auditMachine names the machine of a request whose path does not.
func auditMachine(w http.ResponseWriter, name string) {
	if sw, ok := w.(*statusWriter); ok {
		sw.machine = name
	}
}

func (s *statusWriter) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// audited logs one line per request that may change something: who (the
// token's name and the peer), what, on which machine, and the answer.
func (a *Agent) audited(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK, machine: r.PathValue("name")}
		h(sw, r)
		tok, cert := "", ""
		if t := principal(r.Context()); t != nil {
			tok = t.Name
		}
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			cert = r.TLS.PeerCertificates[0].Subject.String()
		}
		a.log.Info("audit", "token", tok, "client_cert", cert, "remote", r.RemoteAddr, "method", r.Method,
			"path", r.URL.Path, "machine", sw.machine, "status", sw.code)
	}
}
