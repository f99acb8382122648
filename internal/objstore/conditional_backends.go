package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"syscall"

	"cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azblobblob "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"
	"google.golang.org/api/googleapi"
)

// The backends' GetIfChanged (ConditionalGetter).
var (
	_ ConditionalGetter = (*fileStore)(nil)
	_ ConditionalGetter = (*bucketStore)(nil)
)

// GetIfChanged implements ConditionalGetter. The ETag is the file's inode,
// size and modification time: Put and PutIfAbsent publish a new file
// (rename, link), so every write changes the inode. An unchanged file is
// not read.
func (s *fileStore) GetIfChanged(ctx context.Context, key, etag string) ([]byte, string, error) {
	p, err := s.begin(ctx, "get", key)
	if err != nil {
		return nil, "", err
	}
	f, err := os.Open(p)
	if isNotFound(err) {
		return nil, "", fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, "", fmt.Errorf("get %s: %w", key, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", fmt.Errorf("get %s: %w", key, err)
	}
	if fi.IsDir() {
		return nil, "", fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	got := fmt.Sprintf("%x-%x-%x", ino, fi.Size(), fi.ModTime().UnixNano())
	if etag != "" && got == etag {
		return nil, "", fmt.Errorf("get %s: %w", key, ErrNotModified)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, "", fmt.Errorf("get %s: %w", key, err)
	}
	return data, got, nil
}

// GetIfChanged implements ConditionalGetter: S3 and Azure send
// If-None-Match with the ETag, GCS ifGenerationNotMatch with the
// generation (its ETag here); a 304 is ErrNotModified. memblob has no
// conditional reads: it gets the object and compares a content hash. A
// server that ignores the condition and sends the object anyway is caught
// by comparing the ETag it sent.
func (s *bucketStore) GetIfChanged(ctx context.Context, key, etag string) ([]byte, string, error) {
	if err := s.check(ctx, "get", key); err != nil {
		return nil, "", err
	}
	if s.s3 != nil && plainS3Key(key) {
		return s.s3GetIfChanged(ctx, key, etag)
	}
	var az *container.Client
	if s.kind == "azblob" && plainAzureKey(s.prefix+key) && s.b.As(&az) {
		return s.azureGetIfChanged(ctx, az, key, etag)
	}
	if s.kind == "mem" || s.kind == "azblob" {
		data, err := s.Get(ctx, key)
		if err != nil {
			return nil, "", err
		}
		return unchanged(key, data, contentETag(data), etag)
	}
	opts := &blob.ReaderOptions{BeforeRead: func(as func(any) bool) error {
		if etag == "" {
			return nil
		}
		var gcs **storage.ObjectHandle
		switch {
		case as(&gcs):
			gen, err := strconv.ParseInt(etag, 10, 64)
			if err != nil {
				return nil // not a generation: get it whole
			}
			*gcs = (*gcs).If(storage.Conditions{GenerationNotMatch: gen})
		}
		return nil
	}}
	r, err := s.b.NewReader(ctx, s.prefix+key, opts)
	if err != nil {
		if notModified(err) {
			return nil, "", fmt.Errorf("get %s: %w", key, ErrNotModified)
		}
		return nil, "", s.translate("get", key, err, false)
	}
	defer r.Close()
	var got string
	var gcs *storage.Reader
	if r.As(&gcs) && gcs != nil {
		got = strconv.FormatInt(gcs.Attrs.Generation, 10)
	}
	data := make([]byte, r.Size())
	if n, err := io.ReadFull(r, data); err != nil {
		return nil, "", fmt.Errorf("get %s: read %d of %d bytes: %w", key, n, len(data), s.translate("read", key, err, false))
	}
	if got == "" {
		got = contentETag(data)
	}
	return unchanged(key, data, got, etag)
}

// azureGetIfChanged is one Get Blob with If-None-Match, straight through
// the container client: azblob answers a 304 as success with an empty
// response (no ETag, no body), which gocloud's reader cannot take.
func (s *bucketStore) azureGetIfChanged(ctx context.Context, c *container.Client, key, etag string) ([]byte, string, error) {
	opts := &azblobblob.DownloadStreamOptions{}
	if etag != "" {
		tag := azcore.ETag(etag)
		opts.AccessConditions = &azblobblob.AccessConditions{ModifiedAccessConditions: &azblobblob.ModifiedAccessConditions{IfNoneMatch: &tag}}
	}
	resp, err := c.NewBlobClient(s.prefix+key).DownloadStream(ctx, opts)
	if err != nil {
		if bloberror.HasCode(err, bloberror.BlobNotFound, bloberror.ContainerNotFound) {
			return nil, "", fmt.Errorf("get %s: %w", key, ErrNotFound)
		}
		return nil, "", s.translate("get", key, err, false)
	}
	if resp.Body == nil || resp.ETag == nil {
		if etag != "" {
			return nil, "", fmt.Errorf("get %s: %w", key, ErrNotModified)
		}
		return nil, "", fmt.Errorf("get %s: azblob: response without a body or ETag", key)
	}
	defer resp.Body.Close()
	data, err := s.readBody(key, resp.Body, resp.ContentLength)
	if err != nil {
		return nil, "", err
	}
	return unchanged(key, data, string(*resp.ETag), etag)
}

// readBody reads a whole GET response body, which must be as long as the
// response said (length; nil when it did not say): a body cut short is an
// error, never a shorter object.
func (s *bucketStore) readBody(key string, body io.Reader, length *int64) ([]byte, error) {
	data, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, s.translate("read", key, err, false))
	}
	if length != nil && int64(len(data)) != *length {
		return nil, fmt.Errorf("get %s: read %d of %d bytes", key, len(data), *length)
	}
	return data, nil
}

// s3GetIfChanged is one GetObject with If-None-Match.
func (s *bucketStore) s3GetIfChanged(ctx context.Context, key, etag string) ([]byte, string, error) {
	in := &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.prefix + key)}
	if etag != "" {
		in.IfNoneMatch = aws.String(etag)
	}
	out, err := s.s3.GetObject(ctx, in)
	if err != nil {
		if notModified(err) {
			return nil, "", fmt.Errorf("get %s: %w", key, ErrNotModified)
		}
		return nil, "", s.translate("get", key, err, false)
	}
	defer out.Body.Close()
	data, err := s.readBody(key, out.Body, out.ContentLength)
	if err != nil {
		return nil, "", err
	}
	got := aws.ToString(out.ETag)
	if got == "" {
		got = contentETag(data)
	}
	return unchanged(key, data, got, etag)
}

// notModified reports an HTTP 304 from S3, Azure or GCS.
func notModified(err error) bool {
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotModified {
		return true
	}
	var az *azcore.ResponseError
	if errors.As(err, &az) && az.StatusCode == http.StatusNotModified {
		return true
	}
	var g *googleapi.Error
	return errors.As(err, &g) && g.Code == http.StatusNotModified
}
