package volref_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volref"
)

const secret = "s3cr3tVALUE"

func TestParse(t *testing.T) {
	for _, tc := range []struct{ in, pool, name, point string }{
		{"s3://b/pool/web-1?endpoint=http://127.0.0.1:7070&region=us-east-1&use_path_style=true",
			"s3://b/pool?endpoint=http%3A%2F%2F127.0.0.1%3A7070&region=us-east-1&use_path_style=true", "web-1", "head"},
		{"s3://b/web-1", "s3://b", "web-1", "head"},
		{"s3://b/a/b/c/vol.2_x", "s3://b/a/b/c", "vol.2_x", "head"},
		{"file:///var/lib/urldisk/pool/db", "file:///var/lib/urldisk/pool", "db", "head"},
		{"file:///db", "file://", "db", "head"},
		// Regression (issue 16): spellings of one directory are one pool.
		{"file:///var/tmp//pool/web-1", "file:///var/tmp/pool", "web-1", "head"},
		{"file:///var/tmp/./pool/web-1", "file:///var/tmp/pool", "web-1", "head"},
		{"file://localhost/var/tmp/pool//web-1", "file:///var/tmp/pool", "web-1", "head"},
		{"file:///var/tmp/my%20pool/v", "file:///var/tmp/my%20pool", "v", "head"},
		{"mem://test/pool/v", "mem://test/pool", "v", "head"},
		{"mem:///v", "mem://", "v", "head"},
		{"mem://t/v?", "mem://t", "v", "head"},
		{"s3://b/p/" + strings.Repeat("a", 128), "s3://b/p", strings.Repeat("a", 128), "head"},
		{"s3://b/p/v@nightly?region=r", "s3://b/p?region=r", "v", "nightly"},
		{"file:///p/v@42", "file:///p", "v", "42"},
		{"file:///p/v@2026-11-28T10:00:00Z", "file:///p", "v", "2026-11-28T10:00:00Z"},
	} {
		r, err := volref.Parse(tc.in)
		if err != nil || r.Pool != tc.pool || r.Name != tc.name || r.Point.String() != tc.point {
			t.Errorf("Parse(%q) = %+v, %v; want pool %q, name %q, point %s", tc.in, r, err, tc.pool, tc.name, tc.point)
		}
	}
	for _, in := range []string{
		"s3://b", "s3://b/", "s3://b/pool/", "mem://", "mem://x",
		"s3://b/pool/-leading-dash", "s3://b/pool/.hidden", "s3://b/pool/a%20b",
		"s3://b/pool/" + strings.Repeat("a", 129), "s3://b/pool/ü",
		"s3://k:" + secret + "@b/pool/v", "s3://b/pool/v?secret=" + secret, "s3://k:" + secret + "@b",
		"pool/v", "",
	} {
		_, err := volref.Parse(in)
		if !errors.Is(err, objstore.ErrBadURL) {
			t.Errorf("Parse(%q): err = %v, want ErrBadURL", in, err)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("Parse(%q): error echoes the secret: %v", in, err)
		}
	}
	for _, in := range []string{"file:///p/v@", "file:///p/v@x:y", "file:///p/v@-x"} {
		if _, err := volref.Parse(in); !errors.Is(err, volref.ErrInvalid) {
			t.Errorf("Parse(%q): err = %v, want ErrInvalid", in, err)
		}
	}
	if _, err := volref.ParseHead("file:///p/v@nightly"); !errors.Is(err, objstore.ErrBadURL) || !strings.Contains(err.Error(), "@nightly") {
		t.Errorf("ParseHead with a point: %v, want ErrBadURL naming the point", err)
	}
}

// Regression (issue 16): file:///var/tmp//pool/web-1 and
// file:///var/tmp/./pool/web-1 were two volumes to the fleet, which let two
// machines run on one volume.
func TestSpellingsOfOneVolumeAreOneRef(t *testing.T) {
	same := [][]string{
		{"file:///var/tmp/pool/web-1", "file:///var/tmp//pool/web-1", "file:///var/tmp/./pool/web-1",
			"file://localhost/var/tmp/pool/web-1", "file:////var/tmp/pool/./web-1"},
		{"s3://b/p/v?region=r&endpoint=http://h:1", "s3://b/p/v?endpoint=http://h:1&region=r"},
		{"mem:///v", "mem:///v"},
	}
	var canon []string
	for _, group := range same {
		want, err := volref.Parse(group[0])
		if err != nil {
			t.Fatalf("Parse(%q): %v", group[0], err)
		}
		for _, u := range group[1:] {
			if got, err := volref.Parse(u); err != nil || got.URL() != want.URL() {
				t.Errorf("Parse(%q).URL() = %q, %v; want %q like %q", u, got.URL(), err, want.URL(), group[0])
			}
		}
		canon = append(canon, want.URL())
	}
	for _, u := range []string{"file:///var/tmp/pool/web-2", "file:///var/tmp/pool2/web-1", "file:///var/pool/web-1",
		"s3://b/p/v?region=other&endpoint=http://h:1", "mem://x/v"} {
		got, err := volref.Parse(u)
		if err != nil {
			t.Fatalf("Parse(%q): %v", u, err)
		}
		for _, c := range canon {
			if got.URL() == c {
				t.Errorf("Parse(%q).URL() = %q, the same as another volume's", u, c)
			}
		}
	}
}

func TestRefString(t *testing.T) {
	r, err := volref.Parse("s3://b/p/v@nightly?region=r&token=" + secret)
	if err == nil {
		t.Fatalf("Parse accepted a credential option: %+v", r)
	}
	r, err = volref.Parse("s3://b/p/v@nightly?region=r&endpoint=http://h:1")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.String(), "s3://b/p/v@nightly?endpoint=http%3A%2F%2Fh%3A1&region=r"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got, want := r.URL(), "s3://b/p/v?endpoint=http%3A%2F%2Fh%3A1&region=r"; got != want {
		t.Errorf("URL() = %q, want %q", got, want)
	}
}
