package objstore_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
)

const secret = "s3cr3tV4lue"

func TestOpenRejectsBadURLs(t *testing.T) {
	t.Setenv("AWS_REGION", "us-east-1")
	for _, tc := range []struct {
		url  string
		want string // in the error text
	}{
		{"s3://AKIAKEY:" + secret + "@bucket/pool", "credentials must not be in the URL"},
		{"s3://" + secret + "@bucket/pool", "credentials must not be in the URL"},
		{"s3://key:" + secret + "@bucket:notaport/x", "credentials"},
		{"s3://key:s3c/r3tV4lue@bucket/x", "credentials"},
		{"s3:key:" + secret + "@bucket", "credentials"},
		{"s3://bucket/pool?access_key=AKIA&secret=" + secret, "looks like a credential"},
		{"s3://bucket/pool?aws_secret_access_key=" + secret, "looks like a credential"},
		{"s3://bucket/pool?X-Amz-Signature=" + secret, "looks like a credential"},
		{"s3://bucket/pool?session_token=" + secret, "looks like a credential"},
		{"s3://bucket/pool?endpoint=http://u:" + secret + "@127.0.0.1:1", "credentials must not be in the endpoint"},
		{"s3://bucket/pool?profile=" + secret, `unknown query option "profile"`},
		{"s3://bucket/pool?region=us-east-1&region=eu-west-1", "given 2 times"},
		{"s3:///pool", "empty bucket name"},
		{"s3://", "empty bucket name"},
		{"s3://Bad_Bucket/x", "invalid bucket name"},
		{"s3://bucket:123/x", "invalid bucket name"},
		{"s3://bucket/a//b", "bad path"},
		{"s3://bucket/x?endpoint=ftp://host", "http:// or https://"},
		{"s3://bucket/x?endpoint=http://", "no host"},
		{"s3://bucket/x?endpoint=http://h/path", "scheme://host[:port] only"},
		{"s3://bucket/x?use_path_style=maybe", "use_path_style must be true or false"},
		{"s3://bucket/x?region=US%20EAST", "invalid region"},
		{"gcs://bucket/x", `unknown scheme "gcs" (want mem, file, s3, gs or azblob)`},
		{"gs://key:" + secret + "@bucket/pool", "credentials must not be in the URL"},
		{"gs://bucket/pool?access_token=" + secret, "looks like a credential"},
		{"gs://bucket/pool?credentials_file=" + secret, "looks like a credential"},
		{"gs://bucket/pool?region=us", `unknown query option "region" for gs://`},
		{"gs://", "empty bucket name"},
		{"gs://Bad!/x", "invalid bucket name"},
		{"gs://bucket/x?endpoint=http://127.0.0.1:1/storage/v1", "scheme://host[:port] only"},
		{"gs://bucket/x?endpoint=http://u:" + secret + "@127.0.0.1:1", "credentials must not be in the endpoint"},
		{"azblob://acct:" + secret + "@container/pool", "credentials must not be in the URL"},
		{"azblob://container/pool?sas_token=" + secret, "looks like a credential"},
		{"azblob://container/pool?AccountKey=" + secret, "looks like a credential"},
		{"azblob://container/pool?sig=" + secret, "looks like a credential"},
		{"azblob://container/x?endpoint=http://127.0.0.1:1/acct?sv=1%26sig=" + secret, "scheme://host[:port][/path] only"},
		{"azblob://", "empty container name"},
		{"azblob://Bad--name/x", "invalid container name"},
		{"azblob://ab/x", "invalid container name"},
		{"/abs/path", "no scheme"},
		{"relative/path", "no scheme"},
		{"file://relative/path", "absolute path"},
		{"file:relative", "not an absolute URL"},
		{"file:///a/../b", "'..'"},
		{"file:///tmp/x?mode=0755", `unknown query option "mode"`},
		{"mem://n?x=1", `unknown query option "x"`},
		{"mem://n/p#frag", "fragments"},
		{"s3://bucket/%zz", "cannot parse"},
		{"s3://k:" + secret + "@b/%zz", "cannot parse"},
		{"::::", "cannot parse"},
	} {
		s, err := objstore.Open(t.Context(), tc.url)
		if err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded, want error", tc.url)
			continue
		}
		if !errors.Is(err, objstore.ErrBadURL) {
			t.Errorf("Open(%q): err = %v, want ErrBadURL", tc.url, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q): err = %q, want it to mention %q", tc.url, err, tc.want)
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "r3tV4lue") {
			t.Errorf("Open(%q): error echoes the secret: %q", tc.url, err)
		}
	}
}

func TestOpenS3NeedsRegion(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_CA_BUNDLE", "")
	_, err := objstore.Open(t.Context(), "s3://bucket/pool?endpoint=http://127.0.0.1:1")
	if !errors.Is(err, objstore.ErrBadURL) || !strings.Contains(err.Error(), "no region") {
		t.Fatalf("Open without region: err = %v, want ErrBadURL naming the region", err)
	}
}

// Regression (issue 15): opening a file:// store created its directory, so
// `ls`/`info` of a mistyped pool left an empty directory behind. Now only
// the first write creates it; until then the store is empty.
func TestOpenFileCreatesDirOnFirstWrite(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "b", "pool")
	s := open(t, &objstore.Opener{}, "file://"+dir+"/")
	defer s.Close()
	if _, err := os.Stat(filepath.Join(base, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open created a directory: stat err = %v", err)
	}
	if _, err := s.Get(t.Context(), "urldisk-pool.json"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Get from a store whose directory is missing: %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(t.Context(), "urldisk-pool.json"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("Stat in a store whose directory is missing: %v, want ErrNotFound", err)
	}
	if err := s.List(t.Context(), "", func(o objstore.ObjectInfo) error {
		return fmt.Errorf("listed %s", o.Key)
	}); err != nil {
		t.Fatalf("List of a store whose directory is missing: %v, want nothing", err)
	}
	if err := s.Delete(t.Context(), "x"); err != nil {
		t.Fatalf("Delete in a store whose directory is missing: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reads created the pool directory: stat err = %v", err)
	}
	if err := s.Put(t.Context(), "vols/x/volume.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "vols", "x", "volume.json")); err != nil {
		t.Fatalf("object not at its path: %v", err)
	}
	// Reopen (also via file://localhost/) sees the same objects.
	s2 := open(t, &objstore.Opener{}, "file://localhost"+dir)
	defer s2.Close()
	if got, err := s2.Get(t.Context(), "vols/x/volume.json"); err != nil || string(got) != "{}" {
		t.Fatalf("reopened Get = %q, %v", got, err)
	}
	// A file where the pool directory should be is an error.
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := objstore.Open(t.Context(), "file://"+f); err == nil {
		t.Fatal("Open of a regular file as pool succeeded")
	}
}

func TestMemSharing(t *testing.T) {
	ctx := t.Context()
	var o objstore.Opener
	a := open(t, &o, "mem://n")
	if err := a.Put(ctx, "pool/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	// Same Opener, same name: shared, also after the first store is closed.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := open(t, &o, "mem://n")
	if got, err := b.Get(ctx, "pool/k"); err != nil || string(got) != "v" {
		t.Fatalf("same name, same Opener: Get = %q, %v; want shared bucket", got, err)
	}
	// A prefix is a view into the same bucket.
	p := open(t, &o, "mem://n/pool")
	if got, err := p.Get(ctx, "k"); err != nil || string(got) != "v" {
		t.Fatalf("prefixed view: Get = %q, %v", got, err)
	}
	var keys []string
	if err := p.List(ctx, "", func(oi objstore.ObjectInfo) error { keys = append(keys, oi.Key); return nil }); err != nil || len(keys) != 1 || keys[0] != "k" {
		t.Fatalf("prefixed List = %v, %v; want [k]", keys, err)
	}
	// Other name, other Opener, or the package-level Open: not shared.
	for _, s := range []objstore.Store{open(t, &o, "mem://other"), open(t, &objstore.Opener{}, "mem://n"), must(objstore.Open(ctx, "mem://n"))} {
		if _, err := s.Get(ctx, "pool/k"); !errors.Is(err, objstore.ErrNotFound) {
			t.Errorf("unshared mem bucket sees the object: err = %v", err)
		}
		s.Close()
	}
	// The empty name is shared too.
	e1, e2 := open(t, &o, "mem://"), open(t, &o, "mem:///")
	if err := e1.Put(ctx, "x", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e2.Stat(ctx, "x"); err != nil {
		t.Fatalf("mem:// and mem:/// not shared: %v", err)
	}
}

func must(s objstore.Store, err error) objstore.Store {
	if err != nil {
		panic(err)
	}
	return s
}

func TestClosedStore(t *testing.T) {
	for _, u := range []string{"mem://", "file://" + t.TempDir()} {
		s := open(t, &objstore.Opener{}, u)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(t.Context(), "k", nil); err == nil {
			t.Errorf("%s: Put after Close succeeded", u)
		}
		if err := s.Close(); err != nil {
			t.Errorf("%s: second Close: %v", u, err)
		}
	}
}

func TestCanonicalURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"file:///var/tmp//pool/web-1", "file:///var/tmp/pool/web-1"},
		{"file:///var/tmp/./pool/", "file:///var/tmp/pool"},
		{"file://localhost/var/tmp/pool", "file:///var/tmp/pool"},
		{"file:///var/tmp/my%20pool", "file:///var/tmp/my%20pool"},
		{"file:///x/../pool", "file:///x/../pool"}, // left for Open to refuse
		{"s3://b/p?region=r&endpoint=http://h:1", "s3://b/p?endpoint=http%3A%2F%2Fh%3A1&region=r"},
		{"mem://", "mem://"},
		{"mem://t?", "mem://t"},
	} {
		if got, err := objstore.CanonicalURL(tc.in); err != nil || got != tc.want {
			t.Errorf("CanonicalURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"s3://k:" + secret + "@b/pool", "s3://b/pool?secret=" + secret, "pool/v", "", "file:///x#y"} {
		_, err := objstore.CanonicalURL(in)
		if !errors.Is(err, objstore.ErrBadURL) {
			t.Errorf("CanonicalURL(%q): err = %v, want ErrBadURL", in, err)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("CanonicalURL(%q): error echoes the secret: %v", in, err)
		}
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"s3://b/p?endpoint=http://127.0.0.1:7070&region=us-east-1&use_path_style=true",
			"s3://b/p?endpoint=http%3A%2F%2F127.0.0.1%3A7070&region=us-east-1&use_path_style=true"},
		{"s3://key:" + secret + "@b/p", "s3://REDACTED@b/p"},
		{"s3://b/p?secret=" + secret + "&region=r", "s3://b/p?region=r&secret=REDACTED"},
		{"s3://b/p?endpoint=http://u:" + secret + "@h:1", "s3://b/p?endpoint=http%3A%2F%2FREDACTED%40h%3A1"},
		{"s3:k:" + secret + "@b", "s3:REDACTED@b"},
		{"file:///x#" + secret, "file:///x"},
		{"s3://k:" + secret + "@b/%zz", "s3:<unparsable URL>"},
		{"%%" + secret, "<unparsable URL>"},
		{"mem://", "mem://"},
		{"/://k:" + secret + "@b/p", "/://REDACTED@b/p"},
		{"b//k:" + secret + "@h/p@label", "b//REDACTED@h/p@label"},
		{"file:///pool/vol@label", "file:///pool/vol@label"},
		{"s3://b/p?k:" + secret + "@h&region=r", "s3://b/p?REDACTED=REDACTED&region=r"},
	} {
		if got := objstore.Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestValidateKey(t *testing.T) {
	for _, k := range []string{"a", "a/b", "vols/0123/log/00000000000000ff", "x.y-z_1", ".a", "a..b"} {
		if err := objstore.ValidateKey(k); err != nil {
			t.Errorf("ValidateKey(%q) = %v, want nil", k, err)
		}
	}
	for _, k := range []string{"", "/a", "a/", "a//b", ".", "..", "a/./b", "a\\b", "a\x00b", "\xff", strings.Repeat("a", objstore.MaxKeyLen+1), ".urldisk-tmp.1"} {
		if err := objstore.ValidateKey(k); !errors.Is(err, objstore.ErrBadKey) {
			t.Errorf("ValidateKey(%q) = %v, want ErrBadKey", k, err)
		}
	}
}

// The cleaned spellings of a file:// pool open one directory (issue 16).
func TestFileURLSpellingsOpenOneDirectory(t *testing.T) {
	// The cleaned spellings open the same directory; ".." stays refused,
	// since the kernel resolves it through symlinks and path.Clean does not.
	dir := t.TempDir()
	for _, u := range []string{"file://" + dir + "/./pool", "file://" + dir + "//pool"} {
		s := open(t, &objstore.Opener{}, u)
		if err := s.Put(t.Context(), "k", []byte(u)); err != nil {
			t.Fatalf("Put via %s: %v", u, err)
		}
		s.Close()
		if b, err := os.ReadFile(filepath.Join(dir, "pool", "k")); err != nil || string(b) != u {
			t.Errorf("Put via %s landed elsewhere: %q, %v", u, b, err)
		}
	}
	if _, err := objstore.Open(t.Context(), "file://"+dir+"/x/../pool"); !errors.Is(err, objstore.ErrBadURL) || !strings.Contains(err.Error(), "'..'") {
		t.Errorf("Open with '..': %v, want ErrBadURL naming '..'", err)
	}
}
