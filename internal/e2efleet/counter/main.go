// Command counter is the workload of the fleet tests: a machine (process
// runtime) that appends a counter to its disk through the NBD export in
// $URLDISK_NBD_URI.
//
// Disk layout (4 KiB blocks): block 0 is the header, block N (N >= 1) is
// the record of value N. Header and records are
//
//	"URLDCTR1" | value uint64 LE | writer (16 hex characters)
//
// Each step reads the header (value c), writes record c+1, then the header
// c+1, then FLUSH; once the flush succeeds it appends
//
//	ack <c+1> <writer> <host>
//
// to the --acks file (one write(2) with O_APPEND). Every start appends
// "start <writer> <host> <pid> <c>". The writer id is random per start, so
// the tests can tell who wrote each record. Any I/O error ends the program
// with status 1 (after "error <writer> <message>" in the acks file);
// SIGTERM ends it at once.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/nbdclient"
)

const blockSize = 4096

var magic = []byte("URLDCTR1")

func main() {
	acks := flag.String("acks", "", "file the acknowledged values are appended to (required)")
	interval := flag.Duration("interval", 100*time.Millisecond, "pause between steps")
	flag.Parse()
	if *acks == "" {
		fmt.Fprintln(os.Stderr, "counter: --acks is required")
		os.Exit(2)
	}
	uri, host := os.Getenv("URLDISK_NBD_URI"), os.Getenv("URLDISK_HOST")
	if uri == "" {
		fmt.Fprintln(os.Stderr, "counter: $URLDISK_NBD_URI is not set")
		os.Exit(2)
	}
	var id [8]byte
	rand.Read(id[:])
	writer := hex.EncodeToString(id[:])
	out, err := os.OpenFile(*acks, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "counter:", err)
		os.Exit(2)
	}
	note := func(format string, args ...any) {
		if _, err := out.WriteString(fmt.Sprintf(format, args...) + "\n"); err != nil {
			fmt.Fprintln(os.Stderr, "counter: acks file:", err)
			os.Exit(2)
		}
	}
	fail := func(err error) {
		note("error %s %v", writer, err)
		fmt.Fprintln(os.Stderr, "counter:", err)
		os.Exit(1)
	}
	c, err := nbdclient.Dial(uri, 10*time.Second)
	if err != nil {
		fail(err)
	}
	if c.Size() < 2*blockSize {
		fail(fmt.Errorf("disk of %d bytes is too small", c.Size()))
	}
	maxValue := c.Size()/blockSize - 1
	blk := make([]byte, blockSize)
	readHeader := func() uint64 {
		if err := c.ReadAt(blk, 0); err != nil {
			fail(err)
		}
		if !bytes.Equal(blk[:8], magic) {
			if !bytes.Equal(blk, make([]byte, blockSize)) {
				fail(fmt.Errorf("header block is neither empty nor a counter header"))
			}
			return 0
		}
		return binary.LittleEndian.Uint64(blk[8:])
	}
	encode := func(v uint64) []byte {
		b := make([]byte, blockSize)
		copy(b, magic)
		binary.LittleEndian.PutUint64(b[8:], v)
		copy(b[16:32], writer)
		return b
	}
	note("start %s %s %d %d", writer, host, os.Getpid(), readHeader())
	for {
		v := readHeader() + 1
		if v > maxValue {
			fail(fmt.Errorf("disk full at value %d", v))
		}
		if err := c.WriteAt(encode(v), int64(v)*blockSize); err != nil {
			fail(err)
		}
		if err := c.WriteAt(encode(v), 0); err != nil {
			fail(err)
		}
		if err := c.Flush(); err != nil {
			fail(err)
		}
		note("ack %d %s %s", v, writer, host)
		time.Sleep(*interval)
	}
}
