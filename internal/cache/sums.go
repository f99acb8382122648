package cache

import "hash/crc32"

// Sums holds the CRC-32C of each SubBlockSize piece of a chunk, in order;
// entries past the chunk's last sub-block are zero.
type Sums [subBlocks]uint32

var castagnoliTable = castagnoli()

// SubBlockSums computes the CRC-32C of each SubBlockSize piece of data
// (1..ChunkSize bytes). Together with CombineSums it checks a checksum over
// the whole of data and prepares PutSummed in a single pass over the bytes.
func SubBlockSums(data []byte, s *Sums) {
	*s = Sums{}
	SubBlockSumsRange(data, s, 0, subBlocksFor(len(data)))
}

// SubBlockSumsRange sets s[from:to] to the sums of those sub-blocks of
// chunk (the last one may be partial) and leaves the rest of s as it is:
// for a chunk that grows by appends, whose sub-blocks are summed as each
// is completed, while its bytes are still in the CPU's cache.
func SubBlockSumsRange(chunk []byte, s *Sums, from, to int) {
	for i := from; i < to; i++ {
		s[i] = crc32.Checksum(chunk[i*SubBlockSize:min((i+1)*SubBlockSize, len(chunk))], castagnoliTable)
	}
}

// CombineSums returns the CRC-32C of all n bytes whose sub-block sums are s
// (as computed by SubBlockSums): crc32.Checksum(data, Castagnoli), without
// reading data again.
func CombineSums(s *Sums, n int) uint32 {
	if n <= 0 {
		return 0
	}
	crc := s[0]
	for i := 1; i < subBlocksFor(n); i++ {
		l := min(SubBlockSize, n-i*SubBlockSize)
		if l != SubBlockSize {
			crc = multmodp(x2nmodp(uint64(l), 3), crc) ^ s[i]
			continue
		}
		crc = shiftFullTable.mul(crc) ^ s[i]
	}
	return crc
}

// Combine returns the CRC-32C of A‖B from crcA = CRC-32C(A), crcB =
// CRC-32C(B) and lenB = len(B), without reading either: for checksumming a
// whole object assembled from pieces whose sums are already known (a log
// record's frames), see CombineSums.
func Combine(crcA, crcB uint32, lenB int) uint32 {
	if lenB <= 0 {
		return crcA
	}
	return multmodp(x2nmodp(uint64(lenB), 3), crcA) ^ crcB
}

// CRC combination as in zlib's crc32_combine (reflected polynomial
// arithmetic modulo the CRC-32C polynomial): crc(A‖B) = crc(A)·x^(8|B|) ⊕ crc(B).
const castagnoliPoly = 0x82f63b78

// multmodp returns a(x)·b(x) modulo p(x), in the reflected bit order.
func multmodp(a, b uint32) uint32 {
	m := uint32(1) << 31
	var p uint32
	for {
		if a&m != 0 {
			p ^= b
			if a&(m-1) == 0 {
				break
			}
		}
		m >>= 1
		if b&1 != 0 {
			b = b>>1 ^ castagnoliPoly
		} else {
			b >>= 1
		}
	}
	return p
}

// x2nTable[k] = x^(2^k) modulo p(x).
var x2nTable = func() (t [32]uint32) {
	p := uint32(1) << 30 // x^1
	t[0] = p
	for k := 1; k < 32; k++ {
		p = multmodp(p, p)
		t[k] = p
	}
	return t
}()

// x2nmodp returns x^(n·2^k) modulo p(x).
func x2nmodp(n uint64, k uint) uint32 {
	p := uint32(1) << 31 // x^0
	for n != 0 {
		if n&1 != 0 {
			p = multmodp(x2nTable[k&31], p)
		}
		n >>= 1
		k++
	}
	return p
}

// shiftFull appends one full sub-block: x^(8·SubBlockSize).
var shiftFull = x2nmodp(SubBlockSize, 3)

// shiftFullTable is multmodp(shiftFull, ·) a byte at a time. multmodp
// walks the 32 bits of its operand with a data-dependent branch each;
// CombineSums does it 15 times per 64 KiB chunk, for every chunk a writer
// seals or a read fetches: 2.5 % of serve's CPU under a sequential write.
var shiftFullTable = newMulTable(shiftFull)

// mulTable multiplies by a constant a modulo p(x): the product is linear
// in the other operand, so it is the XOR of the products of its 4 bytes,
// each looked up.
type mulTable [4][256]uint32

func newMulTable(a uint32) *mulTable {
	t := new(mulTable)
	for k := range t {
		for b := range t[k] {
			t[k][b] = multmodp(a, uint32(b)<<(8*k))
		}
	}
	return t
}

// mul returns multmodp(a, b) for the table's a.
func (t *mulTable) mul(b uint32) uint32 {
	return t[0][b&0xff] ^ t[1][b>>8&0xff] ^ t[2][b>>16&0xff] ^ t[3][b>>24]
}
