package objstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// ProbePrefix is the key prefix under which Probe creates its short-lived
// probe objects. Nothing else lives there: pool and fleet code never list
// it, so GC, verify and listings ignore probe objects.
const ProbePrefix = "urldisk-probe/"

// StaleProbeAge is how old a probe object must be before a later Probe
// deletes it. A probe lasts milliseconds; one older than this was left by a
// process that died between its create and its delete. Younger ones may
// belong to a probe running now elsewhere, and deleting one of those would
// let that probe's second create succeed (a false "not honoured", safe but
// wrong), so they are left alone; the margin also covers clock skew between
// this host and the store.
const StaleProbeAge = time.Hour

// Probe reports whether s supports an atomic create-if-absent. It creates a
// fresh probe key with PutIfAbsent, tries to create it again with other
// content, and expects ErrExists and the first content to remain. It deletes
// the probe key before returning, and any probe key older than
// StaleProbeAge (a crashed probe's), so at most one small object per crash
// is ever left, until the next probe. A false result with a nil error means
// the store silently overwrote: it must not be used read-write. An error
// means the probe could not be carried out.
//
// Cost: two PUTs, a GET, a LIST and a DELETE. Writers run it at every
// read-write attach, because what matters is the endpoint in use now: a
// pool initialised through a conforming endpoint may later be reached
// through one that drops If-None-Match.
func Probe(ctx context.Context, s Store) (conditionalCreate bool, err error) {
	key := ProbePrefix + rand.Text()
	first, second := []byte("probe: first "+key), []byte("probe: second "+key)
	if err := s.PutIfAbsent(ctx, key, first); err != nil {
		return false, fmt.Errorf("probe: create %s: %w", key, err)
	}
	defer func() {
		if derr := s.Delete(ctx, key); derr != nil && err == nil {
			err = fmt.Errorf("probe: %w", derr)
		}
		// Best effort: a stale probe object costs a few bytes and the
		// next probe tries again, so failing to remove one must not fail
		// the attach that probed.
		_ = deleteStaleProbes(ctx, s, key)
	}()
	err = s.PutIfAbsent(ctx, key, second)
	switch {
	case err == nil:
		return false, nil
	case !errors.Is(err, ErrExists):
		return false, fmt.Errorf("probe: create %s again: %w", key, err)
	}
	got, err := s.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("probe: read back: %w", err)
	}
	return bytes.Equal(got, first), nil
}

// deleteStaleProbes deletes the probe objects older than StaleProbeAge,
// except own (deleted by its probe).
func deleteStaleProbes(ctx context.Context, s Store, own string) error {
	var stale []string
	cutoff := time.Now().Add(-StaleProbeAge)
	if err := s.List(ctx, ProbePrefix, func(oi ObjectInfo) error {
		if oi.Key != own && oi.ModTime.Before(cutoff) {
			stale = append(stale, oi.Key)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list probe objects: %w", err)
	}
	for _, k := range stale {
		if err := s.Delete(ctx, k); err != nil {
			return fmt.Errorf("delete stale probe object: %w", err)
		}
	}
	return nil
}

// Describer is implemented by stores that can name themselves for error
// messages: what kind of store, which bucket or directory, which endpoint,
// and, where the protocol says, which server software. Never credentials.
type Describer interface {
	Describe(ctx context.Context) string
}

// Describe names s for an error message (see Describer); a store that
// cannot describe itself is named by its Go type.
func Describe(ctx context.Context, s Store) string {
	if d, ok := s.(Describer); ok {
		return d.Describe(ctx)
	}
	return fmt.Sprintf("%T", s)
}

var (
	_ Describer = (*bucketStore)(nil)
	_ Describer = (*fileStore)(nil)
)

// Describe implements Describer: "s3 bucket B at HOST (server NAME)". The
// server name is the Server header of a HEAD of the bucket, one extra
// request: callers describe a store only when they are about to report
// something wrong with it.
func (s *bucketStore) Describe(ctx context.Context) string {
	if s.s3 == nil {
		return s.kind + " store"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s bucket %q", s.kind, s.bucket)
	if ep := s.s3.Options().BaseEndpoint; ep != nil {
		// The host only: an endpoint URL could carry user info.
		if u, err := url.Parse(*ep); err == nil && u.Host != "" {
			fmt.Fprintf(&b, " at %s", u.Host)
		}
	} else {
		fmt.Fprintf(&b, " in AWS region %s", s.s3.Options().Region)
	}
	if name := s.serverName(ctx); name != "" {
		fmt.Fprintf(&b, " (server %q)", name)
	}
	return b.String()
}

// serverName returns the Server header of a HEAD of the bucket, or "".
func (s *bucketStore) serverName(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := s.s3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket})
	if err != nil {
		// An error answer names its server too.
		var re *awshttp.ResponseError
		if errors.As(err, &re) && re.Response != nil {
			return re.Response.Header.Get("Server")
		}
		return ""
	}
	if raw, ok := awsmiddleware.GetRawResponse(out.ResultMetadata).(*smithyhttp.Response); ok && raw.Response != nil {
		return raw.Header.Get("Server")
	}
	return ""
}

// Describe implements Describer.
func (s *fileStore) Describe(context.Context) string {
	return "file store at " + s.root
}
