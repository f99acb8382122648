package nbd

import (
	"math/bits"
	"sync"
)

// minClassShift is the smallest buffer size class (4 KiB).
const minClassShift = 12

// bufPool hands out payload buffers by power-of-two size class so that the
// request hot path does not allocate. Buffers are *[]byte so that Put does
// not allocate either.
type bufPool struct {
	classes []sync.Pool // classes[i] holds buffers of 1<<(minClassShift+i) bytes
}

// newBufPool returns a pool serving lengths up to maxLen.
func newBufPool(maxLen int) *bufPool {
	p := &bufPool{classes: make([]sync.Pool, classIndex(maxLen)+1)}
	for i := range p.classes {
		size := 1 << (minClassShift + i)
		p.classes[i].New = func() any {
			b := make([]byte, size)
			return &b
		}
	}
	return p
}

// classIndex returns the size class for n bytes (n >= 1).
func classIndex(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// classSize returns the capacity of the buffer that get(n) returns.
func classSize(n int) int {
	return 1 << (minClassShift + classIndex(n))
}

// get returns a buffer with len(*b) == n. n must be in [1, maxLen].
func (p *bufPool) get(n int) *[]byte {
	b := p.classes[classIndex(n)].Get().(*[]byte)
	*b = (*b)[:n]
	return b
}

// put returns a buffer obtained from get.
func (p *bufPool) put(b *[]byte) {
	c := cap(*b)
	*b = (*b)[:c]
	p.classes[classIndex(c)].Put(b)
}
