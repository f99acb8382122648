package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/volume"
)

// The control socket lets commands on this host act on a volume that a
// running `urldisk serve` holds read-write (checkpoint = flush + snapshot +
// label, restore), instead of attaching a second writer that would fence it.
// One socket per served volume, at controlDir()/<volume id>.sock.

func controlDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "urldisk", "ctl")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("urldisk-%d", os.Getuid()), "ctl")
}

func controlSocket(volumeID string) string { return filepath.Join(controlDir(), volumeID+".sock") }

// controlInUse returns an error if a process on this host serves volume
// volumeID read-write (its control socket answers).
func controlInUse(volumeID string) error {
	path := controlSocket(volumeID)
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("control socket %s is in use: is this volume served by another process on this host?", path)
	}
	return nil
}

type controlRequest struct {
	Label string `json:"label,omitempty"`
	Point string `json:"point,omitempty"`
}

type controlReply struct {
	Checkpoint *format.CheckpointDoc `json:"checkpoint,omitempty"`
	Seq        uint64                `json:"seq,omitempty"`
	Compact    *volume.CompactStats  `json:"compact,omitempty"`
	Error      string                `json:"error,omitempty"`
}

// controlServer serves one volume's control socket until Close.
type controlServer struct {
	srv  *http.Server
	path string
}

func startControl(v *volume.Volume, log *slog.Logger) (*controlServer, error) {
	path := controlSocket(v.Desc().ID)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := controlInUse(v.Desc().ID); err != nil {
		return nil, err
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, rep controlReply, err error) {
		if err != nil {
			rep.Error = err.Error()
			w.WriteHeader(http.StatusConflict)
		}
		json.NewEncoder(w).Encode(rep)
	}
	decode := func(r *http.Request) (controlRequest, error) {
		var req controlRequest
		err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req)
		return req, err
	}
	mux.HandleFunc("POST /checkpoint", func(w http.ResponseWriter, r *http.Request) {
		req, err := decode(r)
		if err != nil {
			reply(w, controlReply{}, err)
			return
		}
		c, err := v.Checkpoint(r.Context(), req.Label)
		reply(w, controlReply{Checkpoint: c}, err)
	})
	mux.HandleFunc("POST /restore", func(w http.ResponseWriter, r *http.Request) {
		req, err := decode(r)
		if err != nil {
			reply(w, controlReply{}, err)
			return
		}
		pt, err := volume.ParsePoint(req.Point)
		if err != nil {
			reply(w, controlReply{}, err)
			return
		}
		seq, err := v.Restore(r.Context(), pt)
		reply(w, controlReply{Seq: seq}, err)
	})
	mux.HandleFunc("POST /compact", func(w http.ResponseWriter, r *http.Request) {
		st, err := v.Compact(r.Context(), volume.CompactOptions{})
		reply(w, controlReply{Compact: &st}, err)
	})
	cs := &controlServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, path: path}
	go func() {
		if err := cs.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("control socket stopped", "err", err)
		}
	}()
	return cs, nil
}

func (c *controlServer) Close(ctx context.Context) error {
	err := c.srv.Shutdown(ctx)
	os.Remove(c.path)
	return err
}

// callControl asks the local serve process holding volumeID to run op. It
// returns (nil, false) if no process serves it here.
func callControl(ctx context.Context, volumeID, op string, req controlRequest) (*controlReply, bool, error) {
	path := controlSocket(volumeID)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	body, _ := json.Marshal(req)
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://urldisk/"+op, bytes.NewReader(body))
	if err != nil {
		return nil, false, err
	}
	resp, err := client.Do(hr)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, false, nil // nobody serves it here
		}
		return nil, false, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer resp.Body.Close()
	var rep controlReply
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return nil, true, fmt.Errorf("control socket %s: bad reply: %w", path, err)
	}
	if rep.Error != "" {
		return &rep, true, errors.New(rep.Error)
	}
	return &rep, true, nil
}
