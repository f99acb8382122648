package objstore

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"
)

// HTTPClient sends HTTP requests for the s3:// backend. *http.Client
// implements it.
type HTTPClient interface {
	Do(*http.Request) (*http.Response, error)
}

// Opener opens pool root URLs. The zero value is ready to use and safe for
// concurrent use.
//
// An Opener owns the registry of in-memory buckets: every Open of
// mem://NAME[/prefix] on the same Opener shares one bucket per NAME (the
// empty name included), for as long as the Opener lives. Closing a Store does
// not discard its mem bucket. Two Openers never share mem buckets.
type Opener struct {
	// HTTPClient, if non-nil, sends the s3:// backend's requests instead of
	// the AWS SDK's default client (tests use it to observe or fail requests).
	HTTPClient HTTPClient
	// S3Credentials, if non-nil, sign the s3:// backend's requests instead
	// of credentials from the SDK's standard chain.
	S3Credentials *S3Credentials

	mu  sync.Mutex
	mem map[string]*blob.Bucket // mem bucket name → bucket; guarded by mu
}

// Open opens a pool root URL with a fresh Opener. A mem:// URL opened this
// way gets a private, empty bucket that nothing else shares; use an Opener to
// share mem buckets.
func Open(ctx context.Context, rawURL string) (Store, error) {
	var o Opener
	return o.Open(ctx, rawURL)
}

// Open opens the pool root rawURL. Keys of the returned Store are relative to
// the URL's path. Supported forms:
//
//	mem://[NAME][/prefix]                in-memory, shared per NAME in this Opener
//	file:///abs/dir                      a directory, created by the first write
//	s3://BUCKET[/prefix][?endpoint=URL&region=R&use_path_style=BOOL]
//	gs://BUCKET[/prefix][?endpoint=URL]
//	azblob://CONTAINER[/prefix][?endpoint=URL]
//
// Credentials are never taken from the URL: user info or credential-like
// query options are refused. S3 credentials come from the AWS SDK's standard
// chain (environment, shared files, instance roles); the region comes from
// ?region= or the standard configuration and must be set. GCS credentials
// are the application default credentials, and none for a plain http://
// endpoint (an emulator: a token must not cross the wire in clear). Azure
// credentials come from AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY, else
// AZURE_STORAGE_CONNECTION_STRING, else DefaultAzureCredential (see
// openAzure). Every URL problem
// is reported as an error wrapping ErrBadURL that names what is wrong and
// never echoes a secret.
func (o *Opener) Open(ctx context.Context, rawURL string) (Store, error) {
	u, q, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "mem":
		if err := checkOptions(u, q, nil); err != nil {
			return nil, err
		}
		prefix, err := urlPrefix(u)
		if err != nil {
			return nil, err
		}
		return newBucketStore(o.memBucket(u.Host), prefix, "mem", false), nil
	case "file":
		dir, err := filePath(u, q)
		if err != nil {
			return nil, err
		}
		return openFileStore(dir)
	case "s3":
		return o.openS3(ctx, u, q)
	case "gs":
		return o.openGCS(ctx, u, q)
	case "azblob":
		return o.openAzure(ctx, u, q)
	default:
		return nil, fmt.Errorf("%w: %s: unknown scheme %q (want mem, file, s3, gs or azblob)", ErrBadURL, Redact(rawURL), u.Scheme)
	}
}

// memBucket returns the shared in-memory bucket called name.
func (o *Opener) memBucket(name string) *blob.Bucket {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.mem == nil {
		o.mem = make(map[string]*blob.Bucket)
	}
	b, ok := o.mem[name]
	if !ok {
		b = memblob.OpenBucket(nil)
		o.mem[name] = b
	}
	return b
}

// parseURL parses raw and applies the checks shared by every scheme. Its
// errors never contain the raw URL, only its redacted form.
func parseURL(raw string) (*url.URL, url.Values, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error texts can quote pieces of the user info: leave them out.
		hint := ""
		if strings.Contains(raw, "@") {
			hint = " (note: credentials must not be in the URL; use the environment or the standard credential chain)"
		}
		return nil, nil, fmt.Errorf("%w: %s: cannot parse URL%s", ErrBadURL, Redact(raw), hint)
	}
	if u.Scheme == "" {
		return nil, nil, fmt.Errorf("%w: %s: no scheme (want mem://, file:///, s3://, gs:// or azblob://)", ErrBadURL, Redact(raw))
	}
	if u.User != nil || (u.Opaque != "" && strings.Contains(u.Opaque, "@")) {
		return nil, nil, fmt.Errorf("%w: %s: credentials must not be in the URL; use the environment or the standard credential chain", ErrBadURL, Redact(raw))
	}
	if u.Opaque != "" {
		return nil, nil, fmt.Errorf("%w: %s: not an absolute URL (want %s://...)", ErrBadURL, Redact(raw), u.Scheme)
	}
	if u.Fragment != "" || strings.HasSuffix(raw, "#") {
		return nil, nil, fmt.Errorf("%w: %s: fragments (#...) are not allowed", ErrBadURL, Redact(raw))
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: malformed query string", ErrBadURL, Redact(raw))
	}
	for k, vs := range q {
		if isCredentialOption(k) {
			return nil, nil, fmt.Errorf("%w: %s: query option %s looks like a credential; credentials must come from the environment or the standard credential chain, never the URL", ErrBadURL, Redact(raw), quoteOption(k))
		}
		if len(vs) > 1 {
			return nil, nil, fmt.Errorf("%w: %s: query option %s given %d times", ErrBadURL, Redact(raw), quoteOption(k), len(vs))
		}
	}
	return u, q, nil
}

// checkOptions refuses query options outside allowed.
func checkOptions(u *url.URL, q url.Values, allowed []string) error {
	for k := range q {
		if !slices.Contains(allowed, k) {
			want := "none"
			if len(allowed) > 0 {
				want = strings.Join(allowed, ", ")
			}
			return fmt.Errorf("%w: %s: unknown query option %s for %s:// (allowed: %s)", ErrBadURL, redactURL(u), quoteOption(k), u.Scheme, want)
		}
	}
	return nil
}

// urlPrefix turns the URL path into a key prefix: "" or "a/b/".
func urlPrefix(u *url.URL) (string, error) {
	p := strings.Trim(u.Path, "/")
	if p == "" {
		return "", nil
	}
	if err := ValidateKey(p); err != nil {
		return "", fmt.Errorf("%w: %s: bad path: %v", ErrBadURL, redactURL(u), err)
	}
	return p + "/", nil
}

// filePath validates a file:// URL and returns its directory.
func filePath(u *url.URL, q url.Values) (string, error) {
	if err := checkOptions(u, q, nil); err != nil {
		return "", err
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("%w: %s: file URLs take an absolute path (file:///abs/dir), not a host or relative path %q", ErrBadURL, redactURL(u), u.Host)
	}
	if u.Path == "" || !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("%w: %s: file URLs need an absolute path (file:///abs/dir)", ErrBadURL, redactURL(u))
	}
	if hasDotDot(u.Path) {
		return "", fmt.Errorf("%w: %s: '..' is not allowed in file paths", ErrBadURL, redactURL(u))
	}
	// "//" and "." are cleaned away, so every spelling of a directory is one
	// pool (see CanonicalURL).
	return filepath.Clean(u.Path), nil
}

// hasDotDot reports whether a slash-separated path has a ".." element.
// Those are refused rather than cleaned: path.Clean resolves "a/.." by
// text, the kernel through a's symlink, so the two can name different
// directories.
func hasDotDot(p string) bool {
	for c := range strings.SplitSeq(p, "/") {
		if c == ".." {
			return true
		}
	}
	return false
}

// s3Options are the query options of s3:// URLs.
var s3Options = []string{"endpoint", "region", "use_path_style"}

// s3Config is a parsed s3:// URL.
type s3Config struct {
	bucket       string
	prefix       string // "" or ends in "/"
	endpoint     string // "" = AWS default
	region       string // "" = from the standard configuration
	usePathStyle bool
}

// bucketRule is what a cloud URL scheme asks of the bucket (container)
// its host names.
type bucketRule struct {
	options      []string          // the query options the scheme takes
	what         string            // "bucket" or "container", for errors
	valid        func(string) bool // the provider's naming rule
	rule         string            // that rule in words, for errors
	endpointPath bool              // endpoint= may have a path (parseEndpoint)
}

// bucketURL is the part every cloud URL shares: bucket, key prefix and
// endpoint.
type bucketURL struct {
	bucket, prefix, endpoint string
}

// parseBucketURL checks u's options and bucket name (a port is never one)
// and parses its prefix and endpoint= option, as r says.
func parseBucketURL(u *url.URL, q url.Values, r bucketRule) (bucketURL, error) {
	var b bucketURL
	if err := checkOptions(u, q, r.options); err != nil {
		return b, err
	}
	if u.Host == "" {
		return b, fmt.Errorf("%w: %s: empty %s name (want %s://%s/prefix)", ErrBadURL, redactURL(u), r.what, u.Scheme, strings.ToUpper(r.what))
	}
	if u.Port() != "" || !r.valid(u.Host) {
		return b, fmt.Errorf("%w: %s: invalid %s name %q (%s)", ErrBadURL, redactURL(u), r.what, u.Host, r.rule)
	}
	b.bucket = u.Host
	var err error
	if b.prefix, err = urlPrefix(u); err != nil {
		return b, err
	}
	if b.endpoint, err = parseEndpoint(u, q, r.endpointPath); err != nil {
		return b, err
	}
	return b, nil
}

func parseS3(u *url.URL, q url.Values) (s3Config, error) {
	b, err := parseBucketURL(u, q, bucketRule{
		options: s3Options, what: "bucket", valid: validBucket.MatchString,
		rule: "3-63 of a-z, 0-9, '.', '-'",
	})
	if err != nil {
		return s3Config{}, err
	}
	c := s3Config{bucket: b.bucket, prefix: b.prefix, endpoint: b.endpoint}
	c.region = q.Get("region")
	if q.Has("region") && !validRegion.MatchString(c.region) {
		return c, fmt.Errorf("%w: %s: invalid region %q", ErrBadURL, redactURL(u), c.region)
	}
	if v := q.Get("use_path_style"); q.Has("use_path_style") {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return c, fmt.Errorf("%w: %s: use_path_style must be true or false, not %q", ErrBadURL, redactURL(u), v)
		}
		c.usePathStyle = b
	}
	return c, nil
}

// parseEndpoint validates the endpoint= option of u: "" if absent, else
// "scheme://host[:port]", plus "/path" where withPath (an Azure service URL
// names its account in the path on emulators). It never has user info or a
// query: either could carry a secret (a SAS token is a query).
func parseEndpoint(u *url.URL, q url.Values, withPath bool) (string, error) {
	ep := q.Get("endpoint")
	if ep == "" {
		return "", nil
	}
	want := "scheme://host[:port] only"
	if withPath {
		want = "scheme://host[:port][/path] only"
	}
	e, err := url.Parse(ep)
	switch {
	case err != nil:
		return "", fmt.Errorf("%w: %s: endpoint is not a URL", ErrBadURL, redactURL(u))
	case e.User != nil:
		return "", fmt.Errorf("%w: %s: credentials must not be in the endpoint URL", ErrBadURL, redactURL(u))
	case e.Scheme != "http" && e.Scheme != "https":
		return "", fmt.Errorf("%w: %s: endpoint must be http:// or https://", ErrBadURL, redactURL(u))
	case e.Host == "":
		return "", fmt.Errorf("%w: %s: endpoint has no host", ErrBadURL, redactURL(u))
	case (!withPath && strings.Trim(e.Path, "/") != "") || e.RawQuery != "" || e.ForceQuery || e.Fragment != "":
		return "", fmt.Errorf("%w: %s: endpoint must be %s", ErrBadURL, redactURL(u), want)
	}
	if p := strings.Trim(e.Path, "/"); p != "" {
		return e.Scheme + "://" + e.Host + "/" + p, nil
	}
	return e.Scheme + "://" + e.Host, nil
}

var (
	validBucket = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	validRegion = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)
)

// isCredentialOption reports whether a query option name looks like it
// carries a secret.
func isCredentialOption(k string) bool {
	k = strings.ToLower(k)
	if k == "sig" || k == "se" || k == "sv" {
		// A SAS token's own fields, pasted into the URL.
		return true
	}
	for _, s := range []string{"secret", "password", "passwd", "token", "credential", "signature", "access_key", "accesskey", "key_id", "keyid", "session", "auth",
		// Azure: an account key, a connection string, a SAS token.
		"accountkey", "account_key", "connectionstring", "connection_string", "sas"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// CanonicalURL returns one spelling for every spelling of a store URL (a
// pool's or a volume's): file:// paths cleaned ("//", "." and a localhost
// host dropped, so file:///var/tmp//pool, file:///var/tmp/./pool and
// file://localhost/var/tmp/pool are one), and query options sorted. A
// file:// path with ".." is left as written (Open refuses it). It applies
// the checks every URL gets (no credentials, no fragment; errors wrap
// ErrBadURL and never echo a secret), not the scheme's own: Open does
// those. The result is not redacted: compare or open it, do not log it.
func CanonicalURL(raw string) (string, error) {
	u, q, err := parseURL(raw)
	if err != nil {
		return "", err
	}
	base, _, _ := strings.Cut(raw, "?")
	if u.Scheme == "file" && !hasDotDot(u.Path) && (u.Host == "" || u.Host == "localhost") {
		// Otherwise two spellings pass as two volumes: two machines on one
		// volume, fencing each other.
		base = "file://"
		if p := path.Clean("/" + u.Path); p != "/" {
			base += (&url.URL{Path: p}).EscapedPath()
		}
	}
	if len(q) > 0 {
		return base + "?" + q.Encode(), nil
	}
	return base, nil
}

// pathUserInfo matches what looks like user info ("key:secret@") in a
// URL's path: a path element holding a ':' before an '@'.
var pathUserInfo = regexp.MustCompile(`(^|/)[^/@]*:[^/]*@`)

// optionName matches what can be a query option's name; other keys are
// redacted with their values.
var optionName = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,64}$`)

// quoteOption quotes a query option's name for an error message, unless it
// cannot be a name (it may be a pasted credential).
func quoteOption(k string) string {
	if optionName.MatchString(k) {
		return strconv.Quote(k)
	}
	return "(not an option name, not shown)"
}

// safeOptions are query options whose values may appear in logs.
var safeOptions = []string{"endpoint", "region", "use_path_style"}

// Redact returns rawURL fit for logs and error messages: user info and the
// values of all query options except endpoint, region and use_path_style are
// replaced by "REDACTED"; a fragment is dropped. An unparsable URL is reduced
// to its scheme.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		scheme, _, ok := strings.Cut(rawURL, ":")
		if !ok || scheme == "" || strings.ContainsAny(scheme, "/@?#") {
			return "<unparsable URL>"
		}
		return scheme + ":<unparsable URL>"
	}
	return redactURL(u)
}

func redactURL(u *url.URL) string {
	r := *u
	if r.User != nil {
		r.User = url.User("REDACTED")
	}
	if r.Opaque != "" {
		if i := strings.LastIndexByte(r.Opaque, '@'); i >= 0 {
			r.Opaque = "REDACTED@" + r.Opaque[i+1:]
		}
	}
	r.Fragment, r.RawFragment = "", ""
	if strings.Contains(r.Path, "@") {
		// A URL typed without its scheme, or with a mangled one
		// ("/://KEY:SECRET@host"), parses with its user info in the path.
		if p := pathUserInfo.ReplaceAllString(r.Path, "${1}REDACTED@"); p != r.Path {
			r.Path, r.RawPath = p, ""
		}
	}
	if r.RawQuery != "" {
		q, err := url.ParseQuery(r.RawQuery)
		if err != nil {
			r.RawQuery = "REDACTED"
		} else {
			for k, vs := range q {
				if !optionName.MatchString(k) {
					// Not an option name: maybe a credential pasted
					// after a stray '?'. Keep neither key nor value.
					delete(q, k)
					q["REDACTED"] = append(q["REDACTED"], "REDACTED")
					continue
				}
				for i, v := range vs {
					switch {
					case k == "endpoint":
						vs[i] = Redact(v)
					case slices.Contains(safeOptions, k) && (v == "" || optionName.MatchString(v)):
					default:
						vs[i] = "REDACTED"
					}
				}
			}
			r.RawQuery = q.Encode()
		}
	}
	if r.Host == "" && r.Path == "" && r.User == nil && r.Opaque == "" {
		// url.URL.String drops the "//" of "mem://".
		s := r.Scheme + "://"
		if r.RawQuery != "" || r.ForceQuery {
			s += "?" + r.RawQuery
		}
		return s
	}
	return r.String()
}
