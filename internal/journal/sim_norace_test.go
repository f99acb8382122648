//go:build !race

package journal

// simRace lowers the default seed count under the race detector.
const simRace = false
