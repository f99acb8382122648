package objstore

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrBadKey: a key is not a valid object key (see ValidateKey).
var ErrBadKey = errors.New("bad object key")

// MaxKeyLen is the longest key, in bytes, that every backend accepts
// (S3's limit, minus room for a pool prefix).
const MaxKeyLen = 900

// tmpPrefix starts the names of the file backend's temporary files. No key
// component may start with it, so temporary files can never be mistaken for
// objects.
const tmpPrefix = ".urldisk-tmp."

// ValidateKey reports whether key is usable with every backend: non-empty
// valid UTF-8 of at most MaxKeyLen bytes, '/'-separated components that are
// non-empty, not "." or "..", contain no NUL byte or backslash, and do not
// start with the reserved prefix ".urldisk-tmp.". The error wraps ErrBadKey.
func ValidateKey(key string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w %q: %s", ErrBadKey, key, why)
	}
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrBadKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: %d bytes long, at most %d allowed", ErrBadKey, len(key), MaxKeyLen)
	case !utf8.ValidString(key):
		return bad("not valid UTF-8")
	case strings.ContainsAny(key, "\x00\\"):
		return bad("contains NUL or backslash")
	}
	for c := range strings.SplitSeq(key, "/") {
		switch {
		case c == "":
			return bad("empty path component (leading, trailing or double slash)")
		case c == "." || c == "..":
			return bad("'.' or '..' component")
		case strings.HasPrefix(c, tmpPrefix):
			return bad("component uses the reserved prefix " + tmpPrefix)
		}
	}
	return nil
}

// validatePrefix checks a List prefix: empty, or a string that could start a
// valid key.
func validatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if strings.HasPrefix(prefix, "/") || !utf8.ValidString(prefix) || strings.ContainsAny(prefix, "\x00\\") {
		return fmt.Errorf("%w: bad list prefix %q", ErrBadKey, prefix)
	}
	return nil
}
