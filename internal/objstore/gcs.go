package objstore

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"cloud.google.com/go/storage"
	"github.com/googleapis/gax-go/v2"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/gcp"
	"google.golang.org/api/option"
)

// storeResponseTimeout bounds each attempt's wait for response headers on
// the gs:// and azblob:// backends, as s3ResponseTimeout does for s3://: a
// store that accepts connections and never answers fails the attempt, so
// the SDK's bounded retries end even for callers without a deadline.
// Callers that need a tighter bound give each request a context deadline
// (the volume's StoreTimeout), which covers all attempts together.
const storeResponseTimeout = s3ResponseTimeout

// storeMaxAttempts bounds the attempts of one gs:// or azblob:// request.
// Both SDKs would otherwise retry an unreachable endpoint for minutes (GCS:
// until the context ends, which may be never; Azure: about 400 s against a
// stalled emulator), where an s3:// store gives up after 3 attempts.
const storeMaxAttempts = 3

// storeRetryDelay and storeMaxRetryDelay are the backoff between those
// attempts: a connection refused three times fails in about a second.
const (
	storeRetryDelay    = 200 * time.Millisecond
	storeMaxRetryDelay = 2 * time.Second
)

// storeDialTimeout bounds connecting to a gs:// or azblob:// endpoint: an
// address that drops SYNs fails the attempt instead of waiting out the
// kernel's minutes of retransmissions.
const storeDialTimeout = 10 * time.Second

// newStoreHTTPClient returns the HTTP client of the gs:// and azblob://
// backends: Go's default transport (proxy from the environment, HTTP/2)
// with the dial and response-header bounds above.
func newStoreHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: storeDialTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.ResponseHeaderTimeout = storeResponseTimeout
	return &http.Client{Transport: tr}
}

// gcsOptions are the query options of gs:// URLs.
var gcsOptions = []string{"endpoint"}

// validGCSBucket is GCS's bucket name rule: 3-63 characters (up to 222
// when dotted) of a-z, 0-9, '-', '_' and '.', starting and ending with a
// letter or digit.
var validGCSBucket = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$`)

// gcsConfig is a parsed gs:// URL.
type gcsConfig struct {
	bucket   string
	prefix   string // "" or ends in "/"
	endpoint string // "" = Google Cloud Storage (or STORAGE_EMULATOR_HOST)
}

func parseGCS(u *url.URL, q url.Values) (gcsConfig, error) {
	b, err := parseBucketURL(u, q, bucketRule{
		options: gcsOptions, what: "bucket",
		valid: func(h string) bool {
			return validGCSBucket.MatchString(h) && (strings.Contains(h, ".") || len(h) <= 63)
		},
		rule: "3-63 of a-z, 0-9, '.', '-', '_'",
	})
	if err != nil {
		return gcsConfig{}, err
	}
	return gcsConfig{bucket: b.bucket, prefix: b.prefix, endpoint: b.endpoint}, nil
}

// openGCS opens a gs:// pool root over GCS's JSON API. Create-if-absent is
// GCS's own precondition (ifGenerationMatch=0), which gcsblob sends for
// IfNotExist; a taken key answers 412, which maps to ErrExists.
//
// Credentials are the application default credentials (GOOGLE_APPLICATION_
// CREDENTIALS, gcloud's user credentials, the metadata server). An
// http:// endpoint, or STORAGE_EMULATOR_HOST without an endpoint, is an
// emulator and gets none: a bearer token must not cross the wire in clear.
func (o *Opener) openGCS(ctx context.Context, u *url.URL, q url.Values) (Store, error) {
	c, err := parseGCS(u, q)
	if err != nil {
		return nil, err
	}
	hc := newStoreHTTPClient()
	opts := []option.ClientOption{option.WithHTTPClient(hc)}
	anonymous := strings.HasPrefix(c.endpoint, "http://") || (c.endpoint == "" && os.Getenv("STORAGE_EMULATOR_HOST") != "")
	if !anonymous {
		creds, err := gcp.DefaultCredentials(ctx)
		if err != nil {
			return nil, fmt.Errorf("open %s: find Google application default credentials: %w", redactURL(u), err)
		}
		authed, err := gcp.NewHTTPClient(hc.Transport, gcp.CredentialsTokenSource(creds))
		if err != nil {
			return nil, fmt.Errorf("open %s: make GCS HTTP client: %w", redactURL(u), err)
		}
		opts = []option.ClientOption{option.WithHTTPClient(&authed.Client)}
	} else {
		opts = append(opts, option.WithoutAuthentication())
	}
	if c.endpoint != "" {
		opts = append(opts, option.WithEndpoint(c.endpoint+"/storage/v1/"))
	}
	client, err := storage.NewClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("open %s: make GCS client: %w", redactURL(u), err)
	}
	client.SetRetry(
		storage.WithMaxAttempts(storeMaxAttempts),
		storage.WithBackoff(gax.Backoff{Initial: storeRetryDelay, Max: storeMaxRetryDelay, Multiplier: 2}),
	)
	b, err := gcsblob.OpenBucket(ctx, nil, c.bucket, &gcsblob.Options{Client: client})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("open %s: %w", redactURL(u), err)
	}
	s := newBucketStore(b, c.prefix, "gs", true)
	s.closeClient = client.Close
	s.beforeWrite = boundGCSUploadRetries
	return s, nil
}

// boundGCSUploadRetries gives one upload at most storeMaxAttempts attempts.
// The client's WithMaxAttempts does not reach uploads: the storage library
// hands them to google-api-go's media uploader, which retries a
// single-request upload until the context ends (for ever without a
// deadline: an unreachable endpoint hung the first flush). Its retry
// decision is the one hook it takes, so a counter there ends the attempts.
func boundGCSUploadRetries(as func(any) bool) error {
	var obj **storage.ObjectHandle
	if !as(&obj) {
		return nil
	}
	failures := 0
	*obj = (*obj).Retryer(storage.WithErrorFunc(func(err error) bool {
		failures++
		return failures < storeMaxAttempts && storage.ShouldRetry(err)
	}))
	return nil
}
