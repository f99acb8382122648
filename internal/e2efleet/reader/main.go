// Command reader is the workload of the first-minute-after-a-move
// benchmark: a machine (process runtime) that reads its working set through
// the NBD export in $URLDISK_NBD_URI, like a database serving lookups.
//
// The working set is the --block blocks every --stride bytes of the --size
// bytes from --offset (stride = block: all of them). Each
// start walks the blocks in a fresh random order (a restarted machine does
// not repeat its last run's order exactly) with --workers connections, one
// read in flight each, round after round, until SIGTERM. It appends to
// --progress (one write(2) per line, O_APPEND):
//
//	start <unix-nanos> <host>
//	tick <unix-nanos> <bytes-read-since-start> <host>   (every 250 ms)
//	pass <unix-nanos> <host>                           (each full round)
//	error <message>                                    (then exits 1)
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/nbdclient"
)

func main() {
	progress := flag.String("progress", "", "file the progress lines are appended to (required)")
	offset := flag.Int64("offset", 16<<20, "start of the working set (bytes)")
	size := flag.Int64("size", 256<<20, "working set size (bytes)")
	block := flag.Int("block", 64<<10, "read size (bytes)")
	stride := flag.Int64("stride", 0, "distance between working-set blocks (bytes); 0 means --block")
	workers := flag.Int("workers", 4, "NBD connections reading at once")
	flag.Parse()
	uri, host := os.Getenv("URLDISK_NBD_URI"), os.Getenv("URLDISK_HOST")
	if *progress == "" || uri == "" || *block <= 0 || *size < int64(*block) || *workers <= 0 {
		fmt.Fprintln(os.Stderr, "reader: need --progress, $URLDISK_NBD_URI, --block > 0, --size >= --block, --workers > 0")
		os.Exit(2)
	}
	out, err := os.OpenFile(*progress, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reader:", err)
		os.Exit(2)
	}
	var mu sync.Mutex // one line per write
	note := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := out.WriteString(fmt.Sprintf(format, args...) + "\n"); err != nil {
			fmt.Fprintln(os.Stderr, "reader: progress file:", err)
			os.Exit(2)
		}
	}
	fail := func(err error) {
		note("error %v", err)
		fmt.Fprintln(os.Stderr, "reader:", err)
		os.Exit(1)
	}
	if *stride == 0 {
		*stride = int64(*block)
	}
	if *stride < int64(*block) {
		fmt.Fprintln(os.Stderr, "reader: --stride must be at least --block")
		os.Exit(2)
	}
	blocks := int(*size / *stride)
	order := rand.Perm(blocks)
	var next, done atomic.Int64
	var read atomic.Int64
	conns := make([]*nbdclient.Conn, *workers)
	for i := range conns {
		if conns[i], err = nbdclient.Dial(uri, 10*time.Second); err != nil {
			fail(err)
		}
		if conns[i].Size() < uint64(*offset+*size) {
			fail(fmt.Errorf("disk of %d bytes is smaller than the working set's end %d", conns[i].Size(), *offset+*size))
		}
	}
	note("start %d %s", time.Now().UnixNano(), host)
	for _, c := range conns {
		go func() {
			buf := make([]byte, *block)
			for {
				i := next.Add(1) - 1
				if err := c.ReadAt(buf, *offset+int64(order[i%int64(blocks)])**stride); err != nil {
					fail(err)
				}
				read.Add(int64(len(buf)))
				if done.Add(1)%int64(blocks) == 0 {
					note("pass %d %s", time.Now().UnixNano(), host)
				}
			}
		}()
	}
	for range time.Tick(250 * time.Millisecond) {
		note("tick %d %d %s", time.Now().UnixNano(), read.Load(), host)
	}
}
