package vmimage

import (
	"strconv"
	"strings"
)

// GuestMarker starts every console line guestinit prints.
const GuestMarker = "URLDISK-GUEST "

// GuestLines returns guestinit's lines in a serial log, in order, without
// the marker (e.g. "boot mode=once", "counter=3", "poweroff",
// "error: ..."). Kernel lines and the console's \r are dropped.
func GuestLines(serialLog []byte) []string {
	var out []string
	for _, line := range strings.Split(string(serialLog), "\n") {
		line = strings.TrimRight(line, "\r")
		if i := strings.Index(line, GuestMarker); i >= 0 {
			out = append(out, strings.TrimSpace(line[i+len(GuestMarker):]))
		}
	}
	return out
}

// GuestCounters returns the counter values guestinit printed, in order.
func GuestCounters(serialLog []byte) []int {
	var out []int
	for _, l := range GuestLines(serialLog) {
		if s, ok := strings.CutPrefix(l, "counter="); ok {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// GuestError returns the first error guestinit printed, or "".
func GuestError(serialLog []byte) string {
	for _, l := range GuestLines(serialLog) {
		if strings.HasPrefix(l, "error:") {
			return l
		}
	}
	return ""
}

// GuestPoweredOff reports whether guestinit printed that it powers off
// cleanly (after a read-only remount).
func GuestPoweredOff(serialLog []byte) bool {
	for _, l := range GuestLines(serialLog) {
		if l == "poweroff" {
			return true
		}
	}
	return false
}
