// Package units parses and formats human-readable byte sizes.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var suffixes = []struct {
	s string
	m float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40}, {"pib", 1 << 50},
	{"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30}, {"tb", 1 << 40}, {"pb", 1 << 50},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"p", 1 << 50},
	{"b", 1},
}

// ParseSize parses sizes like "4096", "512K", "10G", "1.5TiB" (binary
// multiples: K = 1024). It rejects negative, fractional-byte and overflowing
// values with an error naming the input.
func ParseSize(s string) (uint64, error) {
	in := strings.TrimSpace(s)
	lower := strings.ToLower(in)
	mult := 1.0
	for _, suf := range suffixes {
		if strings.HasSuffix(lower, suf.s) {
			lower = strings.TrimSpace(strings.TrimSuffix(lower, suf.s))
			mult = suf.m
			break
		}
	}
	if lower == "" {
		return 0, fmt.Errorf("invalid size %q: no number", s)
	}
	if n, err := strconv.ParseUint(lower, 10, 64); err == nil {
		if mult > 1 && n > math.MaxUint64/uint64(mult) {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		return n * uint64(mult), nil
	}
	f, err := strconv.ParseFloat(lower, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit (K, M, G, T, P; KiB ...)", s)
	}
	if f < 0 {
		return 0, fmt.Errorf("invalid size %q: negative", s)
	}
	v := f * mult
	if v >= math.MaxUint64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("invalid size %q: not a whole number of bytes", s)
	}
	return uint64(v), nil
}

// FormatSize renders n bytes as "10 GiB", "1.5 MiB", "512 B".
func FormatSize(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	s := strconv.FormatFloat(f, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + units[i]
}

// ParsePowerOfTwo parses s as ParseSize does and also requires a power of
// two in [lo, hi] (block sizes), with an error naming the input and the
// allowed range.
func ParsePowerOfTwo(s string, lo, hi uint64) (uint64, error) {
	n, err := ParseSize(s)
	if err != nil {
		return 0, err
	}
	if n < lo || n > hi || n&(n-1) != 0 {
		return 0, fmt.Errorf("invalid size %q: want a power of two from %s to %s", s, FormatSize(lo), FormatSize(hi))
	}
	return n, nil
}
