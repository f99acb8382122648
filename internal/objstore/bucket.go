package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"

	"cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// bucketStore adapts a gocloud.dev blob.Bucket (memblob, s3blob, gcsblob,
// azureblob) to Store.
// It prefixes keys itself rather than with blob.PrefixedBucket, so that one
// shared mem bucket can back many stores without being closed by them.
type bucketStore struct {
	b      *blob.Bucket
	prefix string // "" or ends with "/"; prepended to every key
	kind   string // "mem", "s3", "gs" or "azblob", for error messages
	// ownsBucket: Close closes b. False for shared mem buckets.
	ownsBucket bool
	// retryPut decides whether a failed conditional or plain upload is
	// retried (S3's 409 ConditionalRequestConflict); nil means never.
	retryPut func(error) bool
	// partSize is the upload buffer and part size. Objects smaller than the
	// transfer manager's multipart threshold (16 MiB) are sent as one
	// PutObject, which is what makes If-None-Match apply to them.
	partSize int
	// s3 and bucket are set for s3:// stores: uploads then go straight to
	// one PutObject from the caller's bytes. gocloud's writer hands the body
	// to the S3 transfer manager, which first copies it into a buffer grown
	// by appending (io.ReadAll), several allocations and copies per record.
	s3     *s3.Client
	bucket string
	// closeClient, if set, releases the backend client under b, which
	// closing b does not (gs://: gcsblob leaves a client it was given to
	// its owner).
	closeClient func() error
	// beforeWrite, if set, is every upload's blob.WriterOptions.BeforeWrite
	// (gs:// bounds the retries of each upload with it).
	beforeWrite func(as func(any) bool) error

	closed atomic.Bool
}

var _ Store = (*bucketStore)(nil)

// uploadPartSize is the S3 part size. Together with the transfer manager's
// default 16 MiB multipart threshold it keeps every object below 16 MiB a
// single PutObject.
const uploadPartSize = 16 << 20

func newBucketStore(b *blob.Bucket, prefix, kind string, owns bool) *bucketStore {
	return &bucketStore{b: b, prefix: prefix, kind: kind, ownsBucket: owns, partSize: uploadPartSize}
}

// translate maps a gocloud error to our sentinels. Backend error types do not
// escape: anything other than not-found, exists or a context error is
// flattened into text.
func (s *bucketStore) translate(op, key string, err error, ifNotExist bool) error {
	switch {
	case err == nil:
		return nil
	case errorCode(err) == gcerrors.NotFound:
		return fmt.Errorf("%s %s: %w", op, key, ErrNotFound)
	case ifNotExist && errorCode(err) == gcerrors.FailedPrecondition:
		return fmt.Errorf("%s %s: %w", op, key, ErrExists)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%s %s: %w", op, key, context.Canceled)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s %s: %w", op, key, context.DeadlineExceeded)
	default:
		return fmt.Errorf("%s %s: %s: %v", op, key, s.kind, err)
	}
}

// errorCode classifies err from gocloud or, for direct S3 calls, from the
// AWS SDK (the way s3blob does).
func errorCode(err error) gcerrors.ErrorCode {
	if c := gcerrors.Code(err); c != gcerrors.Unknown {
		return c
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchBucket", "NoSuchKey", "NotFound":
			return gcerrors.NotFound
		case "PreconditionFailed":
			return gcerrors.FailedPrecondition
		}
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case http.StatusNotFound:
			return gcerrors.NotFound
		case http.StatusPreconditionFailed:
			return gcerrors.FailedPrecondition
		}
	}
	return gcerrors.Unknown
}

// check refuses operations on a closed store, with a done context (memblob
// would not notice) or on an invalid key.
func (s *bucketStore) check(ctx context.Context, op, key string) error {
	if s.closed.Load() {
		return fmt.Errorf("%s %s: store is closed", op, key)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s: %w", op, key, err)
	}
	if err := ValidateKey(key); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func (s *bucketStore) Get(ctx context.Context, key string) ([]byte, error) {
	if err := s.check(ctx, "get", key); err != nil {
		return nil, err
	}
	r, err := s.b.NewReader(ctx, s.prefix+key, nil)
	if err != nil {
		return nil, s.translate("get", key, err, false)
	}
	defer r.Close()
	data := make([]byte, r.Size())
	if n, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("get %s: read %d of %d bytes: %w", key, n, len(data), s.translate("read", key, err, false))
	}
	return data, nil
}

func (s *bucketStore) GetRange(ctx context.Context, key string, off int64, p []byte) (int, error) {
	return s.GetRangeProgress(ctx, key, off, p, nil)
}

// GetRangeProgress implements ProgressGetter.
func (s *bucketStore) GetRangeProgress(ctx context.Context, key string, off int64, p []byte, progress func(n int)) (int, error) {
	if err := s.check(ctx, "get range", key); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("get range %s: negative offset %d", key, off)
	}
	if len(p) == 0 {
		_, err := s.Stat(ctx, key)
		return 0, err
	}
	r, err := s.b.NewRangeReader(ctx, s.prefix+key, off, int64(len(p)), &blob.ReaderOptions{BeforeRead: skipObjectChecksum})
	if err != nil {
		if gcerrors.Code(err) != gcerrors.NotFound {
			// S3 answers a range that starts at or past the end with 416
			// InvalidRange: that is an empty read, not an error.
			info, serr := s.Stat(ctx, key)
			if serr == nil && off >= info.Size {
				return 0, nil
			}
			if errors.Is(serr, ErrNotFound) {
				return 0, serr
			}
		}
		return 0, s.translate("get range", key, err, false)
	}
	defer r.Close()
	// Read exactly what the object holds in the range: a body cut short by
	// the network must be an error, not a short read.
	want := int64(len(p))
	if rest := r.Size() - off; rest < want {
		want = max(rest, 0)
	}
	n, err := readFull(r, p[:want], progress)
	if err != nil {
		return n, fmt.Errorf("get range %s [%d, +%d): read %d of %d bytes: %w", key, off, len(p), n, want, s.translate("read", key, err, false))
	}
	return n, nil
}

// readFull is io.ReadFull calling progress(n), if set, each time the first
// n bytes of p have been read.
func readFull(r io.Reader, p []byte, progress func(n int)) (int, error) {
	n := 0
	for n < len(p) {
		m, err := r.Read(p[n:])
		n += m
		if m > 0 && progress != nil {
			progress(n)
		}
		if err != nil {
			if n == len(p) {
				return n, nil
			}
			if err == io.EOF && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
	}
	return n, nil
}

// skipObjectChecksum is GetRange's BeforeRead: it stops the S3 SDK from
// checking an object's whole-object checksum against the body. A range is
// the whole object when it covers all of it (the volume asks for whole
// records so that a store can send them cheaply), and the store then
// returns the object's CRC-32C, which the SDK then computes over every
// byte (~4 % of serve's CPU on a cold sequential read), and compares only
// if the reader reads on to EOF, which io.ReadFull of the exact length
// never does. The volume checks its own checksums (record frames and
// trailers carry CRC-32C). Get keeps the SDK's behaviour. Other
// backends' drivers answer false to these types and read as before.
func skipObjectChecksum(as func(any) bool) error {
	var opts *[]func(*s3.Options)
	if as(&opts) {
		*opts = append(*opts, func(o *s3.Options) {
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		})
	}
	return nil
}

// upload stores data at key; sum, if not nil, is data's CRC-32C as the
// caller computed it (S3 sends it instead of computing it again).
func (s *bucketStore) upload(ctx context.Context, op, key string, data []byte, ifNotExist bool, sum *uint32) error {
	if err := s.check(ctx, op, key); err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		var err error
		if s.s3 != nil && plainS3Key(key) {
			err = s.putObject(ctx, s.prefix+key, data, ifNotExist, sum)
		} else {
			err = s.b.Upload(ctx, s.prefix+key, bytes.NewReader(data), &blob.WriterOptions{
				ContentType: "application/octet-stream",
				BufferSize:  s.partSize,
				IfNotExist:  ifNotExist,
				BeforeWrite: s.beforeWrite,
			})
		}
		if err != nil && s.retryPut != nil && attempt < maxPutAttempts && ctx.Err() == nil && s.retryPut(err) {
			continue
		}
		if err != nil && ifNotExist && s.takenAfterSendError(ctx, key, err) {
			return fmt.Errorf("%s %s: %w (the request failed in transit: %v)", op, key, ErrExists, err)
		}
		return s.translate(op, key, err, ifNotExist)
	}
}

// takenAfterSendError reports whether a conditional create that failed in
// transit (no HTTP response) finds its key taken. A server may refuse a
// conditional PUT of a taken key as soon as it has the headers and close
// the connection while the body is still being sent (versitygw does for
// large bodies): the client then sees a connection reset, never the 412,
// and retrying would reset again for ever. The key is taken either way —
// by another writer, or by this very request if it landed and only the
// response was lost — so ErrExists is the contract's answer: callers
// re-read the object to learn whose it is.
func (s *bucketStore) takenAfterSendError(ctx context.Context, key string, err error) bool {
	var send *smithyhttp.RequestSendError
	if !errors.As(err, &send) || ctx.Err() != nil {
		return false
	}
	_, serr := s.Stat(ctx, key)
	return serr == nil
}

// putObject uploads data as one PutObject: what gocloud's s3blob sends for
// objects below the multipart threshold (same content type and
// If-None-Match), without its copies, and without hashing the body with
// SHA-256 (see putIntegrity).
func (s *bucketStore) putObject(ctx context.Context, key string, data []byte, ifNotExist bool, sum *uint32) error {
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
		ContentType:   aws.String("application/octet-stream"),
	}
	if ifNotExist {
		in.IfNoneMatch = aws.String("*")
	}
	crc, unsigned := putIntegrity(data, sum)
	in.ChecksumCRC32C = aws.String(crc)
	_, err := s.s3.PutObject(ctx, in, unsigned)
	return err
}

// plainS3Key reports whether s3blob would send key unescaped (it escapes
// control characters and the slash of "../"), so that objects put directly
// are found under the same name by gocloud's reads and listings.
func plainS3Key(key string) bool {
	for i := 0; i < len(key); i++ {
		if key[i] < 32 {
			return false
		}
	}
	return !strings.Contains(key, "../")
}

// plainAzureKey reports whether azureblob sends key unescaped (it escapes
// control characters, '"', '#', '%', '?', DEL, backslashes and the slash of
// "../").
func plainAzureKey(key string) bool {
	return !strings.ContainsAny(key, "\"#%?\x7f\\") && plainS3Key(key)
}

// maxPutAttempts bounds retries of uploads the backend asks to retry.
const maxPutAttempts = 5

func (s *bucketStore) Put(ctx context.Context, key string, data []byte) error {
	return s.upload(ctx, "put", key, data, false, nil)
}

func (s *bucketStore) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	return s.upload(ctx, "put if absent", key, data, true, nil)
}

// PutIfAbsentSummed implements SummedPutter.
func (s *bucketStore) PutIfAbsentSummed(ctx context.Context, key string, data []byte, crc32c uint32) error {
	return s.upload(ctx, "put if absent", key, data, true, &crc32c)
}

func (s *bucketStore) Delete(ctx context.Context, key string) error {
	if err := s.check(ctx, "delete", key); err != nil {
		return err
	}
	err := s.b.Delete(ctx, s.prefix+key)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil
	}
	return s.translate("delete", key, err, false)
}

func (s *bucketStore) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := s.check(ctx, "stat", key); err != nil {
		return ObjectInfo{}, err
	}
	a, err := s.b.Attributes(ctx, s.prefix+key)
	if err != nil {
		return ObjectInfo{}, s.translate("stat", key, err, false)
	}
	return ObjectInfo{Key: key, Size: a.Size, ModTime: a.ModTime}, nil
}

func (s *bucketStore) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	return s.ListAfter(ctx, prefix, "", fn)
}

// ListAfter implements Lister: S3 starts the listing after the key
// (ListObjectsV2 StartAfter), GCS and Azure at it (StartOffset; startFrom,
// in Azure's service version 2026-02-06 and later, which the SDK sends),
// so attach does not page through old records. Servers that ignore the
// option (azurite 3.35 does) list from the prefix, and the older keys are
// skipped here.
func (s *bucketStore) ListAfter(ctx context.Context, prefix, after string, fn func(ObjectInfo) error) error {
	if s.closed.Load() {
		return fmt.Errorf("list %q: store is closed", prefix)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	if err := validatePrefix(prefix); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	opts := &blob.ListOptions{Prefix: s.prefix + prefix}
	if after != "" {
		opts.BeforeList = func(as func(any) bool) error {
			var in *s3.ListObjectsV2Input
			var q *storage.Query
			var az *container.ListBlobsHierarchyOptions
			switch {
			case as(&in):
				in.StartAfter = aws.String(s.prefix + after)
			case as(&q):
				// GCS's StartOffset is inclusive: the loop below
				// skips the key itself.
				q.StartOffset = s.prefix + after
			case as(&az) && plainAzureKey(s.prefix+after):
				// Inclusive too. A key azureblob would escape is
				// not given: its escaped form may sort elsewhere.
				az.StartFrom = to.Ptr(s.prefix + after)
			}
			return nil
		}
	}
	it := s.b.List(opts)
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return s.translate("list", prefix, err, false)
		}
		if obj.IsDir {
			continue
		}
		key := obj.Key[len(s.prefix):]
		if after != "" && key <= after {
			continue // backends that ignore StartAfter
		}
		if err := fn(ObjectInfo{Key: key, Size: obj.Size, ModTime: obj.ModTime}); err != nil {
			return err
		}
	}
}

func (s *bucketStore) Close() error {
	if s.closed.Swap(true) || !s.ownsBucket {
		return nil
	}
	err := s.b.Close()
	if s.closeClient != nil {
		err = errors.Join(err, s.closeClient())
	}
	if err != nil {
		return fmt.Errorf("close %s store: %v", s.kind, err)
	}
	return nil
}
