// Command s3raw measures what an S3 endpoint itself can do, with the same
// AWS SDK client configuration urldisk uses (standard credential chain,
// endpoint, region, path-style, default response checksum validation, and
// urldisk's HTTP client: objstore.S3HTTPClient, which sends a PUT body to a
// plain-HTTP socket in one write) and
// the same PutObject integrity as urldisk's record uploads (a CRC-32C
// header and UNSIGNED-PAYLOAD instead of the body's SHA-256: see putIntegrity
// in internal/objstore/s3.go), so that bench/suite.sh compares like with
// like when it puts urldisk's numbers next to the object store's limit.
//
//	s3raw mkbucket [-kind s3|gs|azblob] -endpoint http://127.0.0.1:PORT BUCKET
//	s3raw bench -endpoint http://127.0.0.1:PORT -bucket BUCKET [-dur 2s] [-workers 8]
//	s3raw bench -url POOL-URL [-dur 2s] [-workers 8]
//	s3raw listafter -url POOL-URL [-n 10000]
//
// With -url (s3://, gs://, azblob://, file://) the requests go through
// urldisk's own objstore.Store for that URL, so every backend is measured
// with the very client urldisk uses (bench/stores.sh puts those next to
// urldisk on each store); -endpoint talks to S3 with the AWS SDK directly.
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
// listafter prints the time attach's listing takes past -n log-like keys
// (objstore.ListAfter) next to a List of all of them.
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
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/urldisk/urldisk/internal/objstore"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: s3raw mkbucket|bench|listafter [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "mkbucket":
		err = mkbucket(os.Args[2:])
	case "bench":
		err = bench(os.Args[2:])
	case "listafter":
		err = listAfter(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "s3raw:", err)
		os.Exit(1)
	}
}

func client(ctx context.Context, endpoint string) (*s3.Client, error) {
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(envOr("AWS_REGION", "us-east-1")),
		config.WithHTTPClient(objstore.S3HTTPClient()))
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
	endpoint := fs.String("endpoint", "", "the store's endpoint URL")
	kind := fs.String("kind", "s3", "s3, gs (fake-gcs-server's JSON API) or azblob (shared key from $AZURE_STORAGE_ACCOUNT and $AZURE_STORAGE_KEY)")
	_ = fs.Parse(args)
	if fs.NArg() != 1 || *endpoint == "" {
		return errors.New("usage: s3raw mkbucket [-kind s3|gs|azblob] -endpoint URL BUCKET")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := fs.Arg(0)
	switch *kind {
	case "s3":
		c, err := client(ctx, *endpoint)
		if err != nil {
			return err
		}
		_, err = c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
		var ae smithy.APIError
		if errors.As(err, &ae) && (ae.ErrorCode() == "BucketAlreadyOwnedByYou" || ae.ErrorCode() == "BucketAlreadyExists") {
			return nil
		}
		return err
	case "gs":
		body, err := json.Marshal(map[string]string{"name": name})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, *endpoint+"/storage/v1/b?project=bench", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusConflict {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			return fmt.Errorf("create bucket %s: %s: %s", name, resp.Status, msg)
		}
		return nil
	case "azblob":
		cred, err := container.NewSharedKeyCredential(os.Getenv("AZURE_STORAGE_ACCOUNT"), os.Getenv("AZURE_STORAGE_KEY"))
		if err != nil {
			return fmt.Errorf("shared key from $AZURE_STORAGE_ACCOUNT/$AZURE_STORAGE_KEY: %w", err)
		}
		c, err := container.NewClientWithSharedKeyCredential(*endpoint+"/"+name, cred, nil)
		if err != nil {
			return err
		}
		_, err = c.Create(ctx, nil)
		if bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("create container %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("mkbucket: unknown -kind %q (want s3, gs or azblob)", *kind)
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

// ops are the requests bench times, on keys relative to its -prefix: put
// creates a fresh key (create-if-absent, like urldisk's record uploads)
// holding data, whose CRC-32C is sum; getRange reads len(p) bytes of key at
// off into p; get reads a whole object of len(p) bytes into p.
type ops struct {
	put      func(ctx context.Context, key string, data []byte, sum uint32) error
	get      func(ctx context.Context, key string, p []byte) error
	getRange func(ctx context.Context, key string, off int64, p []byte) error
	close    func() error
}

// s3Ops sends PutObject/GetObject with the AWS SDK directly, configured as
// urldisk's s3:// backend is.
func s3Ops(ctx context.Context, endpoint, bucket, prefix string) (ops, error) {
	c, err := client(ctx, endpoint)
	if err != nil {
		return ops{}, err
	}
	unsigned := s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
	// get reads the whole body of one GetObject into p.
	get := func(ctx context.Context, in *s3.GetObjectInput, p []byte) error {
		out, err := c.GetObject(ctx, in)
		if err != nil {
			return err
		}
		defer out.Body.Close()
		if _, err := io.ReadFull(out.Body, p); err != nil {
			return fmt.Errorf("read %s %s: %w", *in.Key, aws.ToString(in.Range), err)
		}
		return nil
	}
	return ops{
		put: func(ctx context.Context, key string, data []byte, sum uint32) error {
			_, err := c.PutObject(ctx, &s3.PutObjectInput{
				Bucket: aws.String(bucket), Key: aws.String(prefix + key), Body: bytes.NewReader(data),
				ContentLength: aws.Int64(int64(len(data))), IfNoneMatch: aws.String("*"),
				ContentType:    aws.String("application/octet-stream"),
				ChecksumCRC32C: aws.String(crc32cBase64(sum)),
			}, unsigned)
			return err
		},
		get: func(ctx context.Context, key string, p []byte) error {
			return get(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + key)}, p)
		},
		getRange: func(ctx context.Context, key string, off int64, p []byte) error {
			return get(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(prefix + key),
				Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1))}, p)
		},
		close: func() error { return nil },
	}, nil
}

// storeOps goes through urldisk's own objstore.Store for rawURL (any
// scheme urldisk speaks), with the client configuration urldisk uses:
// PutIfAbsentSummed where the store takes a precomputed CRC-32C (as
// urldisk's record uploads do), GetRange for reads.
func storeOps(ctx context.Context, rawURL, prefix string) (ops, error) {
	st, err := objstore.Open(ctx, rawURL)
	if err != nil {
		return ops{}, err
	}
	sp, summed := st.(objstore.SummedPutter)
	getRange := func(ctx context.Context, key string, off int64, p []byte) error {
		n, err := st.GetRange(ctx, prefix+key, off, p)
		if err == nil && n < len(p) {
			err = fmt.Errorf("get range %s at %d: %d of %d bytes", key, off, n, len(p))
		}
		return err
	}
	return ops{
		put: func(ctx context.Context, key string, data []byte, sum uint32) error {
			if summed {
				return sp.PutIfAbsentSummed(ctx, prefix+key, data, sum)
			}
			return st.PutIfAbsent(ctx, prefix+key, data)
		},
		// urldisk reads records with ranged GETs, a whole one too.
		get:      func(ctx context.Context, key string, p []byte) error { return getRange(ctx, key, 0, p) },
		getRange: getRange,
		close:    st.Close,
	}, nil
}

func bench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	endpoint := fs.String("endpoint", "", "S3 endpoint URL (the AWS SDK directly)")
	bucket := fs.String("bucket", "", "bucket (must exist), with -endpoint")
	storeURL := fs.String("url", "", "instead of -endpoint/-bucket: a pool root URL (s3://, gs://, azblob://, file://), measured through urldisk's objstore.Store")
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
	ctx := context.Background()
	var o ops
	var err error
	switch {
	case *storeURL != "" && *endpoint == "" && *bucket == "":
		o, err = storeOps(ctx, *storeURL, *prefix)
	case *storeURL == "" && *endpoint != "" && *bucket != "":
		o, err = s3Ops(ctx, *endpoint, *bucket, *prefix)
	default:
		return errors.New("usage: s3raw bench -endpoint URL -bucket BUCKET | -url POOL-URL")
	}
	if err != nil {
		return err
	}
	defer o.close()
	big := make([]byte, 4<<20)
	small := make([]byte, 4<<10)
	_, _ = rand.Read(big)
	_, _ = rand.Read(small)
	// The sums are computed once, outside the timed loops: urldisk does not
	// hash a record again to upload it either (its CRC-32C is combined from
	// the frame checksums it already has).
	bigSum, smallSum := crc32c(big), crc32c(small)
	r := Result{Workers: *workers, DurationSecond: dur.Seconds()}

	// Warm up the connection pool (one request per worker).
	if err := parallel(*workers, time.Nanosecond, func(w, i int) error {
		return o.put(ctx, fmt.Sprintf("warm/%d-%d", w, i), small, smallSum)
	}); err != nil {
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
		if err := o.put(ctx, fmt.Sprintf("big/%d-%d", w, i), big, bigSum); err != nil {
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
	put4k, err := latencies(*dur, func(i int) error { return o.put(ctx, fmt.Sprintf("small/%d", i), small, smallSum) })
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
		if err := o.get(ctx, fmt.Sprintf("big/%d-%d", w, i%wrote[w]), bufs[w]); err != nil {
			return err
		}
		got.Add(int64(len(bufs[w])))
		return nil
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
		return o.getRange(ctx, key, int64(off), buf)
	})
	if err != nil {
		return fmt.Errorf("ranged get 4 KiB: %w", err)
	}
	r.Get4KOps, r.Get4KMeanUs, r.Get4KP50Us, r.Get4KP99Us = get4k.n, get4k.mean, get4k.p50, get4k.p99

	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(r)
}

// ListResult is what listafter prints.
type ListResult struct {
	Keys        int     `json:"keys"`
	ListAllMs   float64 `json:"list_all_ms"`
	ListAfterMs float64 `json:"list_after_ms"`
	AfterKeys   int     `json:"after_keys"`
}

// listAfter measures what attach's listing of a long log costs: it creates
// -n small objects named like log records (a 16-digit hex sequence number)
// and times objstore.ListAfter past all but the last 10 of them, the way
// attach lists the records after its snapshot, against a List of all.
func listAfter(args []string) error {
	fs := flag.NewFlagSet("listafter", flag.ExitOnError)
	storeURL := fs.String("url", "", "pool root URL (s3://, gs://, azblob://, file://)")
	prefix := fs.String("prefix", fmt.Sprintf("list-%d/", time.Now().UnixNano()), "key prefix")
	n := fs.Int("n", 10000, "objects to create")
	workers := fs.Int("workers", 8, "concurrent creates")
	_ = fs.Parse(args)
	if *storeURL == "" || *n < 10 {
		return errors.New("usage: s3raw listafter -url POOL-URL [-n 10000 (at least 10)]")
	}
	ctx := context.Background()
	st, err := objstore.Open(ctx, *storeURL)
	if err != nil {
		return err
	}
	defer st.Close()
	key := func(i int) string { return fmt.Sprintf("%s%016x", *prefix, i) }
	var next atomic.Int64
	if err := parallel(*workers, time.Nanosecond, func(int, int) error {
		for i := int(next.Add(1)) - 1; i < *n; i = int(next.Add(1)) - 1 {
			if err := st.PutIfAbsent(ctx, key(i), []byte("r")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("create %d objects: %w", *n, err)
	}
	r := ListResult{Keys: *n}
	count := func(oi objstore.ObjectInfo) error { r.AfterKeys++; return nil }
	t0 := time.Now()
	if err := st.List(ctx, *prefix, count); err != nil {
		return err
	}
	r.ListAllMs = float64(time.Since(t0).Microseconds()) / 1e3
	if r.AfterKeys != *n {
		return fmt.Errorf("list %s: %d objects, want %d", *prefix, r.AfterKeys, *n)
	}
	r.AfterKeys = 0
	t0 = time.Now()
	if err := objstore.ListAfter(ctx, st, *prefix, key(*n-11), count); err != nil {
		return err
	}
	r.ListAfterMs = float64(time.Since(t0).Microseconds()) / 1e3
	if r.AfterKeys != 10 {
		return fmt.Errorf("list %s after %s: %d objects, want 10", *prefix, key(*n-11), r.AfterKeys)
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func crc32c(data []byte) uint32 { return crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)) }

// crc32cBase64 is a CRC-32C as the x-amz-checksum-crc32c header carries
// it (base64 of the big-endian sum), as urldisk sends it.
func crc32cBase64(sum uint32) string {
	var be [4]byte
	binary.BigEndian.PutUint32(be[:], sum)
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
