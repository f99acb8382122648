//go:build !race

package nbd

// raceEnabled: the race detector is on (sync.Pool then drops items, so
// allocation counts mean nothing).
const raceEnabled = false
