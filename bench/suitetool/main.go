// Command suitetool prepares volumes and times attaches for bench/suite.sh.
// It is a benchmark helper, not part of urldisk.
//
//	suitetool records -url VOLURL -size 64M -n 10000
//	    create the volume (and pool) and write n 4 KiB records: one record
//	    per write (SegmentBytes 4096), then close normally (as serve would)
//	suitetool mkvol -url VOLURL -size 32G [-scatter 100]
//	    create a sparse volume with a few scattered 4 KiB writes
//	suitetool attach -bin URLDISK -url VOLURL -sock PATH -cache DIR [-timeout 60s]
//	    start `urldisk serve VOLURL --listen unix:PATH --cache DIR` and print
//	    the milliseconds from the start of the process until an NBD client
//	    has completed the handshake (NBD_OPT_GO of the volume's export);
//	    then stop serve with SIGTERM and wait for it
//
// Credentials for s3:// URLs come from the environment, as for urldisk.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/urldisk/urldisk/internal/units"
	"github.com/urldisk/urldisk/internal/volref"
	"github.com/urldisk/urldisk/internal/volume"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: suitetool records|mkvol|attach [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "records":
		err = records(os.Args[2:])
	case "mkvol":
		err = mkvol(os.Args[2:])
	case "attach":
		err = attach(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "suitetool:", err)
		os.Exit(1)
	}
}

var log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// openOrCreate opens the volume at rawURL, creating pool and volume.
func openOrCreate(ctx context.Context, rawURL string, size uint64, o volume.Options) (*volume.Volume, error) {
	ref, err := volref.ParseHead(rawURL)
	if err != nil {
		return nil, err
	}
	name := ref.Name
	popts := volume.PoolOptions{Logger: log}
	p, err := volume.OpenPoolURL(ctx, ref.Pool, popts)
	if errors.Is(err, volume.ErrNoPool) {
		p, err = volume.InitPoolURL(ctx, ref.Pool, popts)
	}
	if err != nil {
		return nil, err
	}
	if _, err := p.Resolve(ctx, name); err != nil {
		if _, err := p.Create(ctx, name, volume.CreateOptions{Size: size}); err != nil {
			return nil, err
		}
	}
	o.Logger = log
	return p.Open(ctx, name, o)
}

func sizeFlag(fs *flag.FlagSet, def string) *string { return fs.String("size", def, "volume size") }

func records(args []string) error {
	fs := flag.NewFlagSet("records", flag.ExitOnError)
	url := fs.String("url", "", "volume URL")
	size := sizeFlag(fs, "64M")
	n := fs.Int("n", 10000, "records to write")
	_ = fs.Parse(args)
	sz, err := units.ParseSize(*size)
	if err != nil {
		return err
	}
	ctx := context.Background()
	v, err := openOrCreate(ctx, *url, sz, volume.Options{SegmentBytes: 4096, IdleFlush: -1, Uploads: 16})
	if err != nil {
		return err
	}
	p := make([]byte, 4096)
	blocks := int64(sz / 4096)
	start := time.Now()
	for i := 0; i < *n; i++ {
		p[0], p[1] = byte(i)|1, byte(i>>8)
		if err := v.WriteAt(ctx, p, (int64(i)%blocks)*4096); err != nil {
			return err
		}
	}
	if err := v.Close(ctx); err != nil {
		return err
	}
	fmt.Printf("wrote %d records in %.1f s\n", *n, time.Since(start).Seconds())
	return nil
}

func mkvol(args []string) error {
	fs := flag.NewFlagSet("mkvol", flag.ExitOnError)
	url := fs.String("url", "", "volume URL")
	size := sizeFlag(fs, "1G")
	scatter := fs.Int("scatter", 100, "4 KiB writes spread over the volume")
	_ = fs.Parse(args)
	sz, err := units.ParseSize(*size)
	if err != nil {
		return err
	}
	ctx := context.Background()
	v, err := openOrCreate(ctx, *url, sz, volume.Options{})
	if err != nil {
		return err
	}
	p := make([]byte, 4096)
	for i := 0; i < *scatter; i++ {
		p[0] = byte(i) | 1
		if err := v.WriteAt(ctx, p, int64(i)*int64(sz/uint64(*scatter)/4096*4096)); err != nil {
			return err
		}
	}
	return v.Close(ctx)
}

func attach(args []string) error {
	fs := flag.NewFlagSet("attach", flag.ExitOnError)
	bin := fs.String("bin", "urldisk", "urldisk binary")
	url := fs.String("url", "", "volume URL")
	sock := fs.String("sock", "", "unix socket path for --listen")
	cacheDir := fs.String("cache", "", "cache directory (should not exist: an empty cache)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	logFile := fs.String("log", "", "append serve's stderr here")
	_ = fs.Parse(args)
	ref, err := volref.ParseHead(*url)
	if err != nil {
		return err
	}
	name := ref.Name
	_ = os.Remove(*sock)
	cmd := exec.Command(*bin, "serve", *url, "--listen", "unix:"+*sock, "--cache", *cacheDir, "--cache-size", "1G")
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd.Stderr = f
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(2 * time.Minute):
			_ = cmd.Process.Kill()
			return errors.New("serve did not exit within 2m of SIGTERM")
		}
	}
	deadline := start.Add(*timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("serve exited before answering: %v", err)
		default:
		}
		c, err := net.Dial("unix", *sock)
		if err != nil {
			lastErr = err
			time.Sleep(time.Millisecond)
			continue
		}
		c.SetDeadline(deadline)
		err = handshake(c, name)
		c.Close()
		if err != nil {
			lastErr = err
			break
		}
		ms := float64(time.Since(start).Microseconds()) / 1e3
		if err := stop(); err != nil {
			return fmt.Errorf("serve: %v", err)
		}
		fmt.Printf("%.1f\n", ms)
		return nil
	}
	_ = stop()
	return fmt.Errorf("no NBD answer within %v: %v", *timeout, lastErr)
}

// NBD fixed-newstyle handshake up to a successful NBD_OPT_GO, then
// NBD_CMD_DISC. Just enough of the protocol to time an attach.
const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic      = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic = 0x3e889045565a9
	optGo         = 7
	repAck        = 1
	reqMagic      = 0x25609513
	cmdDisc       = 2
)

func handshake(c net.Conn, export string) error {
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != optMagic {
		return errors.New("not a fixed-newstyle NBD server")
	}
	serverFlags := binary.BigEndian.Uint16(hello[16:])
	clientFlags := uint32(serverFlags & 3) // FIXED_NEWSTYLE | NO_ZEROES as offered
	msg := binary.BigEndian.AppendUint32(nil, clientFlags)
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 0) // no info requests
	msg = binary.BigEndian.AppendUint64(msg, optMagic)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	msg = append(msg, data...)
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("send NBD_OPT_GO: %w", err)
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return fmt.Errorf("read option reply: %w", err)
		}
		if binary.BigEndian.Uint64(h[:]) != optReplyMagic {
			return errors.New("bad option reply magic")
		}
		typ := binary.BigEndian.Uint32(h[12:])
		n := binary.BigEndian.Uint32(h[16:])
		if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
			return err
		}
		if typ&(1<<31) != 0 {
			return fmt.Errorf("NBD_OPT_GO refused (reply type %#x)", typ)
		}
		if typ == repAck {
			break
		}
	}
	disc := binary.BigEndian.AppendUint32(nil, reqMagic)
	disc = binary.BigEndian.AppendUint16(disc, 0)
	disc = binary.BigEndian.AppendUint16(disc, cmdDisc)
	disc = append(disc, make([]byte, 8+8+4)...)
	_, err := c.Write(disc)
	return err
}
