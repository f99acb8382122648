package volref

import (
	"errors"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
)

// The secrets FuzzParse plants in user info and query options: no error
// text and no log form of a Ref may contain them.
const (
	fuzzUserSecret  = "USERSECRET7f3a"
	fuzzQuerySecret = "QUERYSECRET9c1d"
)

// FuzzParse checks the volume URL parser on arbitrary input: it never
// panics, every error wraps ErrBadURL or ErrInvalid, no error or log form
// ever shows a credential planted in the URL, and an accepted URL is
// canonical (parsing its canonical form gives the same Ref).
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"s3://b/pool/web-1@nightly?region=r",
		"file:///var/tmp//pool/./web-1",
		"mem:///web-1",
		"mem://x/p/v@42",
		"s3://b/p/v@2026-11-28T10:00:00Z?endpoint=http://127.0.0.1:7070&region=us-east-1&use_path_style=true",
		"s3://b/p/",
		"file://relative/v",
		"http://h/v",
		"s3://b/p/v@",
		"s3://b/p/v@::",
		"mem://%zz/v",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		check := func(in string) {
			r, err := Parse(in)
			if err != nil {
				if !errors.Is(err, objstore.ErrBadURL) && !errors.Is(err, ErrInvalid) {
					t.Fatalf("Parse(%q): error %v wraps neither ErrBadURL nor ErrInvalid", in, err)
				}
				if strings.Contains(err.Error(), fuzzUserSecret) || strings.Contains(err.Error(), fuzzQuerySecret) {
					t.Fatalf("Parse(%q): error shows a credential: %v", in, err)
				}
				return
			}
			if s := r.String(); strings.Contains(s, fuzzUserSecret) || strings.Contains(s, fuzzQuerySecret) {
				t.Fatalf("Parse(%q).String() = %q shows a credential", in, s)
			}
			again, err := Parse(r.URL())
			if err != nil {
				t.Fatalf("Parse(%q) = %+v, but its canonical URL %q does not parse: %v", in, r, r.URL(), err)
			}
			if again.Pool != r.Pool || again.Name != r.Name {
				t.Fatalf("Parse(%q) = %s/%s, but its canonical URL parses to %s/%s", in, r.Pool, r.Name, again.Pool, again.Name)
			}
		}
		check(raw)
		// The same input with credentials planted where users put them by
		// mistake: user info after the scheme, and a secret query option.
		if scheme, rest, ok := strings.Cut(raw, "://"); ok {
			check(scheme + "://AKID:" + fuzzUserSecret + "@" + rest)
			sep := "?"
			if strings.Contains(rest, "?") {
				sep = "&"
			}
			check(raw + sep + "secret_access_key=" + fuzzQuerySecret)
		}
	})
}
