// Package volref owns the volume URL: "<pool>/<name>[@point][?options]" is
// parsed once, here, into a Ref (canonical pool URL, volume name, point in
// history), and the volume naming rules live here too.
//
// It sits between the storage layer and its users: objstore parses and
// redacts store URLs and knows nothing of volumes; volume, fleet, agent and
// cli take a Ref (or its canonical URL) instead of splitting strings
// themselves. It depends on objstore only, so fleet can use it without
// importing the volume engine.
package volref

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
)

// ErrInvalid is wrapped by errors about points and checkpoint labels. (It
// is volume.ErrInvalid too: the engine reports the same mistakes.) Errors
// about the URL itself, the volume name included, wrap objstore.ErrBadURL.
var ErrInvalid = errors.New("invalid argument")

// Ref is a parsed volume URL.
type Ref struct {
	// Pool is the canonical pool URL (file:// paths cleaned, options
	// sorted); it is not redacted: open it, do not log it.
	Pool string
	// Name is the volume's name in the pool.
	Name string
	// Point is the point in history after '@'; the zero Point is the head.
	Point Point
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`)

// ValidateName reports whether name is a valid volume name: 1 to 128
// characters of [a-zA-Z0-9._-], starting with a letter or digit. The error
// wraps objstore.ErrBadURL, since a name is the last element of a volume
// URL.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		// A name holding '@' may be user info of a mis-shaped URL
		// ("file:/x://KEY:SECRET@/."): show only what follows the last '@'.
		shown := name
		if i := strings.LastIndexByte(name, '@'); i >= 0 {
			shown = "REDACTED" + name[i:]
		}
		return fmt.Errorf("%w: invalid volume name %q (want [a-zA-Z0-9][a-zA-Z0-9._-]{0,127})", objstore.ErrBadURL, shown)
	}
	return nil
}

// Parse parses a volume URL "<pool>/<name>[@point][?options]":
//
//	s3://b/pool/web-1@nightly?region=r  →  pool s3://b/pool?region=r, name web-1, point nightly
//	file:///var/tmp//pool/./web-1       →  pool file:///var/tmp/pool, name web-1
//	mem:///web-1                        →  pool mem://, name web-1
//
// Every spelling of one volume gives the same Ref. The point is optional
// (digits: a sequence number, an RFC 3339 time, else a checkpoint label).
// URL errors wrap objstore.ErrBadURL, point errors ErrInvalid; none echoes
// a credential. Parse does not check the pool's scheme options; opening
// the pool does.
func Parse(raw string) (Ref, error) {
	base, query, hasQuery := strings.Cut(raw, "?")
	var pt Point
	if at := strings.LastIndexByte(base, '@'); at > strings.LastIndexByte(base, '/') {
		p, err := ParsePoint(base[at+1:])
		if err != nil {
			return Ref{}, fmt.Errorf("parse %s: %w", objstore.Redact(raw), err)
		}
		pt, base = p, base[:at]
	}
	plain := base
	if hasQuery {
		plain += "?" + query
	}
	// The name is checked on the URL as written: cleaning would turn
	// "pool/" into the volume "pool".
	_, afterScheme, ok := strings.Cut(base, "://")
	if slash := strings.IndexByte(afterScheme, '/'); ok && (slash < 0 || strings.HasSuffix(afterScheme, "/")) {
		return Ref{}, fmt.Errorf("%w: %s: no volume name (want <pool>/<name>)", objstore.ErrBadURL, objstore.Redact(raw))
	}
	canon, err := objstore.CanonicalURL(plain)
	if err != nil {
		return Ref{}, err
	}
	cbase, cquery, _ := strings.Cut(canon, "?")
	i := strings.LastIndexByte(cbase, '/')
	if !ok || i < 0 {
		return Ref{}, fmt.Errorf("%w: %s: no volume name (want <pool>/<name>)", objstore.ErrBadURL, objstore.Redact(raw))
	}
	r := Ref{Pool: cbase[:i], Name: cbase[i+1:], Point: pt}
	if err := ValidateName(r.Name); err != nil {
		return Ref{}, fmt.Errorf("parse %s: %w", objstore.Redact(raw), err)
	}
	if cquery != "" {
		r.Pool += "?" + cquery
	}
	return r, nil
}

// ParseHead parses a volume URL that must not name a point: what a writer
// attaches or a machine runs on is always the head.
func ParseHead(raw string) (Ref, error) {
	r, err := Parse(raw)
	if err != nil {
		return Ref{}, err
	}
	if !r.Point.IsHead() {
		return Ref{}, fmt.Errorf("%w: %s: a point (@%s) is not allowed here; clone it to a new volume first", objstore.ErrBadURL, r, r.Point)
	}
	return r, nil
}

// URL returns the canonical volume URL without the point: equal for every
// spelling of one volume and different for different ones. It is not
// redacted: compare or open it, log String.
func (r Ref) URL() string {
	base, query, hasQuery := strings.Cut(r.Pool, "?")
	s := base + "/" + r.Name
	if hasQuery {
		s += "?" + query
	}
	return s
}

// String returns the reference fit for logs: redacted, with its point.
func (r Ref) String() string {
	s := objstore.Redact(r.URL())
	if r.Point.IsHead() {
		return s
	}
	base, query, hasQuery := strings.Cut(s, "?")
	s = base + "@" + r.Point.String()
	if hasQuery {
		s += "?" + query
	}
	return s
}

// Point names a point in a volume's history: a checkpoint label, a log
// sequence number, or a time. The zero Point is the head.
type Point struct {
	Label string
	Seq   uint64 // valid when HasSeq
	// HasSeq distinguishes seq 0 from "no seq".
	HasSeq bool
	Time   time.Time
}

// IsHead reports whether p names the head (no point given).
func (p Point) IsHead() bool { return p.Label == "" && !p.HasSeq && p.Time.IsZero() }

func (p Point) String() string {
	switch {
	case p.Label != "":
		return p.Label
	case p.HasSeq:
		return strconv.FormatUint(p.Seq, 10)
	case !p.Time.IsZero():
		return p.Time.UTC().Format(time.RFC3339Nano)
	}
	return "head"
}

var labelRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`)

// ValidateLabel checks a checkpoint label: 1 to 128 of [a-zA-Z0-9._-],
// starting with a letter or digit, and not all digits (that would be a seq).
func ValidateLabel(label string) error {
	if !labelRE.MatchString(label) {
		return fmt.Errorf("%w: checkpoint label %q: want 1-128 characters of [a-zA-Z0-9._-] starting with a letter or digit", ErrInvalid, label)
	}
	if _, err := strconv.ParseUint(label, 10, 64); err == nil {
		return fmt.Errorf("%w: checkpoint label %q: all digits would read as a sequence number", ErrInvalid, label)
	}
	return nil
}

// ParsePoint parses what follows '@' in NAME@POINT: digits are a sequence
// number, an RFC 3339 time is a time, anything else a checkpoint label.
func ParsePoint(s string) (Point, error) {
	if s == "" {
		return Point{}, fmt.Errorf("%w: empty point after '@'", ErrInvalid)
	}
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		return Point{Seq: n, HasSeq: true}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return Point{Time: t}, nil
	}
	if strings.ContainsAny(s, ":") {
		return Point{}, fmt.Errorf("%w: point %q is neither a sequence number, an RFC 3339 time (2026-11-28T10:00:00Z) nor a label", ErrInvalid, s)
	}
	if err := ValidateLabel(s); err != nil {
		return Point{}, err
	}
	return Point{Label: s}, nil
}
