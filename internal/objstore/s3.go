package objstore

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"net/url"
	"time"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"gocloud.dev/blob/s3blob"
)

// s3ResponseTimeout bounds each attempt's wait for the response headers once
// its request is sent: a store that accepts connections but never answers
// (stopped, wedged) fails the attempt instead of holding it forever, so the
// SDK's retries (its standard retryer: 3 attempts, backoff up to 20 s) add up
// to a bounded time even for callers without a deadline. It is generous
// because S3 answers a PUT only after storing the whole body; callers that
// need a tighter bound give each request a context deadline (the volume's
// StoreTimeout), which covers all of the SDK's attempts together, so
// retries can never stretch it.
const s3ResponseTimeout = 60 * time.Second

// newS3HTTPClient is the SDK's default HTTP client with a response-header
// timeout per attempt, whose plain-HTTP connections send request bodies
// without an extra copy (writeToDialer).
func newS3HTTPClient(responseTimeout time.Duration) *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.ResponseHeaderTimeout = responseTimeout
		tr.DialContext = writeToDialer(tr.DialContext)
	})
}

// S3HTTPClient is the HTTP client s3:// stores use unless
// Opener.HTTPClient is set; exported so that bench/s3raw's raw S3
// reference sends its requests exactly as urldisk does.
func S3HTTPClient() *awshttp.BuildableClient { return newS3HTTPClient(s3ResponseTimeout) }

// openS3 opens an s3:// pool root. The AWS configuration (credentials,
// default region, retries) comes from the SDK's standard chain; the URL only
// adds endpoint, region and path-style addressing.
func (o *Opener) openS3(ctx context.Context, u *url.URL, q url.Values) (Store, error) {
	c, err := parseS3(u, q)
	if err != nil {
		return nil, err
	}
	var opts []func(*config.LoadOptions) error
	if c.region != "" {
		opts = append(opts, config.WithRegion(c.region))
	}
	if opt := o.S3Credentials.loadOption(); opt != nil {
		opts = append(opts, opt)
	}
	if o.HTTPClient != nil {
		opts = append(opts, config.WithHTTPClient(o.HTTPClient))
	} else {
		opts = append(opts, config.WithHTTPClient(S3HTTPClient()))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("open %s: load AWS configuration: %w", redactURL(u), err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("%w: %s: no region: add ?region= to the URL or set AWS_REGION", ErrBadURL, redactURL(u))
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		if c.endpoint != "" {
			so.BaseEndpoint = &c.endpoint
		}
		so.UsePathStyle = c.usePathStyle
		// Ranged GETs carry no whole-object checksum to validate; do not
		// log that on every read.
		so.DisableLogOutputChecksumValidationSkipped = true
	})
	b, err := s3blob.OpenBucket(ctx, client, c.bucket, &s3blob.Options{
		RequestChecksumCalculation: cfg.RequestChecksumCalculation,
	})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", redactURL(u), err)
	}
	s := newBucketStore(b, c.prefix, "s3", true)
	s.retryPut = isS3ConditionalConflict
	s.s3, s.bucket = client, c.bucket
	return s, nil
}

// SummedPutter is implemented by stores that send a body's CRC-32C with
// it (S3, whose server checks it): PutIfAbsentSummed is PutIfAbsent with
// that CRC-32C supplied by a caller that has it already (a log record's is
// combined from its frame checksums), so the bytes are not read again. A
// wrong sum makes the S3 store refuse the object (BadDigest), never store
// it. Wrappers that change or inspect data need not implement it: callers
// fall back to PutIfAbsent.
type SummedPutter interface {
	PutIfAbsentSummed(ctx context.Context, key string, data []byte, crc32c uint32) error
}

var _ SummedPutter = (*bucketStore)(nil)

// putIntegrity returns what protects a PutObject body: its CRC-32C for the
// x-amz-checksum-crc32c header (base64 of the big-endian sum, as S3 wants),
// which the store checks against the body it received and rejects the PUT
// on a mismatch, and the per-call option that signs the request with
// UNSIGNED-PAYLOAD instead of the body's SHA-256.
//
// Why: over a plain http:// endpoint the SDK otherwise hashes every body
// with SHA-256 for the signature (~340 MB/s on one core here, the largest
// CPU cost of a sequential write) and, by default, also with CRC-32 (IEEE,
// ~5 GB/s). CRC-32C is hardware-accelerated (~13 GB/s), and an explicit
// checksum header makes the SDK's checksum middleware compute nothing. The
// headers, including the checksum, are still signed; what the body no
// longer has is a cryptographic hash, which only matters against an active
// attacker on an unencrypted connection (use https:// there: the SDK then
// sends UNSIGNED-PAYLOAD anyway). Records also carry their own per-frame
// CRC-32C, checked on every read.
//
// sum, if not nil, is data's CRC-32C as the caller computed it.
func putIntegrity(data []byte, sum *uint32) (crc32cBase64 string, unsigned func(*s3.Options)) {
	var crc uint32
	if sum != nil {
		crc = *sum
	} else {
		crc = crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
	}
	var be [4]byte
	binary.BigEndian.PutUint32(be[:], crc)
	return base64.StdEncoding.EncodeToString(be[:]), s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
}

// isS3ConditionalConflict reports S3's 409 ConditionalRequestConflict: a
// concurrent conditional write was in progress; AWS asks to retry, and the
// retry then learns whether the key was taken.
func isS3ConditionalConflict(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "ConditionalRequestConflict"
}
