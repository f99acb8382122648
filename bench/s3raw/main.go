// Command s3raw measures what an S3 endpoint itself can do, with the same
// AWS SDK client configuration urldisk uses (standard credential chain,
// endpoint, region, path-style, default response checksum validation) and
// the same PutObject integrity as urldisk's record uploads (a CRC-32C
// header and UNSIGNED-PAYLOAD instead of the body's SHA-256: see putIntegrity
// in internal/objstore/s3.go), so that bench/suite.sh compares like with
// like when it puts urldisk's numbers next to the object store's limit.
//
//	s3raw mkbucket -endpoint http://127.0.0.1:PORT BUCKET
//	s3raw bench -endpoint http://127.0.0.1:PORT -bucket BUCKET [-dur 2s] [-workers 8]
//
// bench prints one JSON object with four measurements:
//
//	put4m: PutObject of 4 MiB objects (If-None-Match: *, fresh keys, like
//	       urldisk's record uploads) from -workers goroutines; MB/s
//	put4k: PutObject of 4 KiB objects, one at a time; latency mean/p50/p99
//	get4m: GetObject of whole 4 MiB objects (those put4m wrote) from
//	       -workers goroutines; MB/s
//	get4k: ranged GetObject of 4 KiB at a random 4 KiB-aligned offset of one
//	       of those objects, one at a time; latency mean/p50/p99 (what one
//	       cold 4k read of a disk costs at least)
//
// -endpoint may be a proxy in front of the store (bench/s3proxy): the
// suite's remote profile measures the store through the same proxy as
// urldisk and s3backer.
//
// Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never
// from flags. This is a benchmark helper, not part of urldisk.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: s3raw mkbucket|bench [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "mkbucket":
		err = mkbucket(os.Args[2:])
	case "bench":
		err = bench(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "s3raw:", err)
		os.Exit(1)
	}
}

func client(ctx context.Context, endpoint string) (*s3.Client, error) {
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(envOr("AWS_REGION", "us-east-1")))
	if err != nil {
		return nil, err
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.UsePathStyle = true
		o.DisableLogOutputChecksumValidationSkipped = true
	}), nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func mkbucket(args []string) error {
	fs := flag.NewFlagSet("mkbucket", flag.ExitOnError)
	endpoint := fs.String("endpoint", "", "S3 endpoint URL")
	_ = fs.Parse(args)
	if fs.NArg() != 1 || *endpoint == "" {
		return errors.New("usage: s3raw mkbucket -endpoint URL BUCKET")
	}
	ctx := context.Background()
	c, err := client(ctx, *endpoint)
	if err != nil {
		return err
	}
	_, err = c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(fs.Arg(0))})
	var ae smithy.APIError
	if errors.As(err, &ae) && (ae.ErrorCode() == "BucketAlreadyOwnedByYou" || ae.ErrorCode() == "BucketAlreadyExists") {
		return nil
	}
	return err
}

// Result is what bench prints.
type Result struct {
	Put4MMBps   float64 `json:"put4m_mbps"`
	Put4MOps    int     `json:"put4m_ops"`
	Put4KMeanUs float64 `json:"put4k_mean_us"`
	Put4KP50Us  float64 `json:"put4k_p50_us"`
	Put4KP99Us  float64 `json:"put4k_p99_us"`
	Put4KOps    int     `json:"put4k_ops"`
	Get4MMBps   float64 `json:"get4m_mbps"`
	Get4MOps    int     `json:"get4m_ops"`
	Get4KMeanUs float64 `json:"get4k_mean_us"`
	Get4KP50Us  float64 `json:"get4k_p50_us"`
	Get4KP99Us  float64 `json:"get4k_p99_us"`
	Get4KOps    int     `json:"get4k_ops"`
	Workers     int     `json:"workers"`

	// With -cpu-pid: CPU time (utime+stime, ms) spent during the 4 MiB
	// throughput phases by s3raw itself and by that process (the store),
	// so that bench/cpu-account.sh can report CPU per MiB moved, a figure
	// that other load on the machine does not change.
	Put4MSelfCPUMs float64 `json:"put4m_self_cpu_ms,omitempty"`
	Put4MPeerCPUMs float64 `json:"put4m_peer_cpu_ms,omitempty"`
	Get4MSelfCPUMs float64 `json:"get4m_self_cpu_ms,omitempty"`
	Get4MPeerCPUMs float64 `json:"get4m_peer_cpu_ms,omitempty"`
	DurationSecond float64 `json:"duration_s"`
}

func bench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	endpoint := fs.String("endpoint", "", "S3 endpoint URL")
	bucket := fs.String("bucket", "", "bucket (must exist)")
	prefix := fs.String("prefix", fmt.Sprintf("s3raw-%d/", time.Now().UnixNano()), "key prefix")
	dur := fs.Duration("dur", 2*time.Second, "duration of each measurement")
	workers := fs.Int("workers", 8, "concurrent requests for the throughput measurements")
	cpuPid := fs.Int("cpu-pid", 0, "also report the CPU time this process (the store) and s3raw spend in the 4 MiB phases")
	_ = fs.Parse(args)
	// cpu returns s3raw's and the -cpu-pid process's CPU time so far (ms);
	// zeros without -cpu-pid.
	cpu := func() (self, peer float64, err error) {
		if *cpuPid == 0 {
			return 0, 0, nil
		}
		if self, err = procCPUMs("self"); err != nil {
			return 0, 0, err
		}
		peer, err = procCPUMs(fmt.Sprint(*cpuPid))
		return self, peer, err
	}
	if *endpoint == "" || *bucket == "" {
		return errors.New("usage: s3raw bench -endpoint URL -bucket BUCKET")
	}
	ctx := context.Background()
	c, err := client(ctx, *endpoint)
	if err != nil {
		return err
	}
	big := make([]byte, 4<<20)
	small := make([]byte, 4<<10)
	_, _ = rand.Read(big)
	_, _ = rand.Read(small)
	// The sums are computed once, outside the timed loops: urldisk does not
	// hash a record again to upload it either (its CRC-32C is combined from
	// the frame checksums it already has).
	bigSum, smallSum := crc32cBase64(big), crc32cBase64(small)
	unsigned := s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
	put := func(key string, data []byte, sum string) error {
		_, err := c.PutObject(ctx, &s3.PutObjectInput{
			Bucket: bucket, Key: aws.String(*prefix + key), Body: bytes.NewReader(data),
			ContentLength: aws.Int64(int64(len(data))), IfNoneMatch: aws.String("*"),
			ContentType:    aws.String("application/octet-stream"),
			ChecksumCRC32C: aws.String(sum),
		}, unsigned)
		return err
	}
	r := Result{Workers: *workers, DurationSecond: dur.Seconds()}

	// Warm up the connection pool (one request per worker).
	if err := parallel(*workers, time.Nanosecond, func(w, i int) error { return put(fmt.Sprintf("warm/%d-%d", w, i), small, smallSum) }); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}

	// 4 MiB PUT throughput.
	var n atomic.Int64
	wrote := make([]int, *workers) // objects each worker wrote: big/W-0 .. big/W-(wrote[W]-1)
	self0, peer0, err := cpu()
	if err != nil {
		return err
	}
	t0 := time.Now()
	err = parallel(*workers, *dur, func(w, i int) error {
		if err := put(fmt.Sprintf("big/%d-%d", w, i), big, bigSum); err != nil {
			return err
		}
		n.Add(1)
		wrote[w] = i + 1
		return nil
	})
	if err != nil {
		return fmt.Errorf("put 4 MiB: %w", err)
	}
	el := time.Since(t0).Seconds()
	self1, peer1, err := cpu()
	if err != nil {
		return err
	}
	r.Put4MSelfCPUMs, r.Put4MPeerCPUMs = self1-self0, peer1-peer0
	r.Put4MOps = int(n.Load())
	r.Put4MMBps = float64(n.Load()) * float64(len(big)) / el / 1e6

	// 4 KiB PUT latency, one at a time.
	put4k, err := latencies(*dur, func(i int) error { return put(fmt.Sprintf("small/%d", i), small, smallSum) })
	if err != nil {
		return fmt.Errorf("put 4 KiB: %w", err)
	}
	r.Put4KOps, r.Put4KMeanUs, r.Put4KP50Us, r.Put4KP99Us = put4k.n, put4k.mean, put4k.p50, put4k.p99

	// 4 MiB GET throughput over the objects written above.
	var got atomic.Int64
	bufs := make([][]byte, *workers)
	for w := range bufs {
		bufs[w] = make([]byte, len(big))
	}
	if self0, peer0, err = cpu(); err != nil {
		return err
	}
	t0 = time.Now()
	err = parallel(*workers, *dur, func(w, i int) error {
		key := fmt.Sprintf("big/%d-%d", w, i%wrote[w])
		out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: bucket, Key: aws.String(*prefix + key)})
		if err != nil {
			return err
		}
		defer out.Body.Close()
		m, err := io.ReadFull(out.Body, bufs[w])
		got.Add(int64(m))
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			err = nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("get 4 MiB: %w", err)
	}
	el = time.Since(t0).Seconds()
	if self1, peer1, err = cpu(); err != nil {
		return err
	}
	r.Get4MSelfCPUMs, r.Get4MPeerCPUMs = self1-self0, peer1-peer0
	r.Get4MOps = int(got.Load() / int64(len(big)))
	r.Get4MMBps = float64(got.Load()) / el / 1e6

	// Ranged 4 KiB GET latency, one at a time, at random aligned offsets
	// of the big objects (seeded: the same reads every run).
	rng := mrand.New(mrand.NewPCG(1, 2))
	buf := make([]byte, 4<<10)
	get4k, err := latencies(*dur, func(int) error {
		w := rng.IntN(*workers)
		key := fmt.Sprintf("big/%d-%d", w, rng.IntN(wrote[w]))
		off := rng.IntN(len(big)/len(buf)) * len(buf)
		out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: bucket, Key: aws.String(*prefix + key),
			Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+len(buf)-1))})
		if err != nil {
			return err
		}
		defer out.Body.Close()
		if _, err := io.ReadFull(out.Body, buf); err != nil {
			return fmt.Errorf("read %s at %d: %w", key, off, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ranged get 4 KiB: %w", err)
	}
	r.Get4KOps, r.Get4KMeanUs, r.Get4KP50Us, r.Get4KP99Us = get4k.n, get4k.mean, get4k.p50, get4k.p99

	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(r)
}

// crc32cBase64 is data's CRC-32C as the x-amz-checksum-crc32c header
// carries it (base64 of the big-endian sum), as urldisk sends it.
func crc32cBase64(data []byte) string {
	var be [4]byte
	binary.BigEndian.PutUint32(be[:], crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)))
	return base64.StdEncoding.EncodeToString(be[:])
}

// latency is a summary of one-at-a-time request latencies, in µs.
type latency struct {
	n              int
	mean, p50, p99 float64
}

// latencies calls fn(0), fn(1), ... one at a time until d has passed (at
// least once) and summarizes how long the calls took.
func latencies(d time.Duration, fn func(i int) error) (latency, error) {
	var lat []time.Duration
	end := time.Now().Add(d)
	for i := 0; i == 0 || time.Now().Before(end); i++ {
		s := time.Now()
		if err := fn(i); err != nil {
			return latency{}, err
		}
		lat = append(lat, time.Since(s))
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, x := range lat {
		sum += x
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return latency{
		n:    len(lat),
		mean: us(sum) / float64(len(lat)),
		p50:  us(lat[len(lat)/2]),
		p99:  us(lat[min(len(lat)-1, len(lat)*99/100)]),
	}, nil
}

// parallel runs fn(worker, i) for i = 0, 1, ... on each of n workers until d
// has passed (each worker does at least one call); the first error stops all.
func parallel(n int, d time.Duration, fn func(w, i int) error) error {
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	var stop atomic.Bool
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i == 0 || (time.Now().Before(end) && !stop.Load()); i++ {
				if err := fn(w, i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					stop.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// procCPUMs is the utime+stime of process pid ("self" for s3raw) from
// /proc/PID/stat, in ms. The fields count USER_HZ ticks, which Linux fixes
// at 100 per second for user space whatever the kernel's HZ.
func procCPUMs(pid string) (float64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read cpu time of process %s: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields from the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%s/stat: %d fields after the command name", pid, len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse /proc/%s/stat utime/stime: %w", pid, err)
	}
	return float64(u+s) * 10, nil
}
