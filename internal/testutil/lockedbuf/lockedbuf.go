// Package lockedbuf is a bytes.Buffer safe for concurrent writers and
// readers, for collecting a child process's output in tests.
package lockedbuf

import (
	"bytes"
	"sync"
)

// Buffer is safe for concurrent use. The zero value is ready to use.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
