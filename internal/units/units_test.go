package units

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]uint64{"4096": 4096, "10G": 10 << 30, "10GiB": 10 << 30, "512k": 512 << 10, "1.5M": 3 << 19, " 2 T ": 2 << 40, "7b": 7}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1G", "1.5", "abc", "1e30P", "10X", "NaN"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1 KiB", 3 << 19: "1.5 MiB", 10 << 30: "10 GiB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q want %q", n, got, want)
		}
	}
}

func TestParsePowerOfTwo(t *testing.T) {
	good := map[string]uint64{"512": 512, "4K": 4096, "4KiB": 4096, "64k": 64 << 10, "1M": 1 << 20}
	for in, want := range good {
		if got, err := ParsePowerOfTwo(in, 512, 1<<20); err != nil || got != want {
			t.Errorf("ParsePowerOfTwo(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "256", "3000", "2M", "1G", "x"} {
		if _, err := ParsePowerOfTwo(in, 512, 1<<20); err == nil || !strings.Contains(err.Error(), in) {
			t.Errorf("ParsePowerOfTwo(%q): %v, want an error naming the input", in, err)
		}
	}
}
