// Package control is the per-volume control socket of a process that holds
// a volume read-write (urldisk serve, the agent): other commands on the host
// ask it to checkpoint, restore or compact instead of attaching a second
// writer that would fence it. One socket per volume, at Dir()/<id>.sock.
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urldisk/urldisk/internal/rundir"
	"github.com/urldisk/urldisk/internal/volume"
)

// Dir is where control sockets live: rundir.Base()/ctl
// ($XDG_RUNTIME_DIR/urldisk/ctl or $TMPDIR/urldisk-UID/ctl).
func Dir() string { return filepath.Join(rundir.Base(), "ctl") }

// Socket is the control socket path of volume id.
func Socket(volumeID string) string { return SocketIn(rundir.Base(), volumeID) }

// InUse returns an error if a process on this host serves volume
// volumeID read-write (its control socket answers).
func InUse(volumeID string) error {
	path := Socket(volumeID)
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("control socket %s is in use: is this volume served by another process on this host?", path)
	}
	return nil
}

// Request is what a caller asks for.
type Request struct {
	Label string `json:"label,omitempty"`
	Point string `json:"point,omitempty"`
	Size  uint64 `json:"size,omitempty"` // resize: the new size in bytes
}

// Reply is the holder's answer.
type Reply struct {
	Checkpoint *volume.Checkpoint   `json:"checkpoint,omitempty"`
	Seq        uint64               `json:"seq,omitempty"`
	Compact    *volume.CompactStats `json:"compact,omitempty"`
	Error      string               `json:"error,omitempty"`
}

// Server serves one volume's control socket until Close.
type Server struct {
	srv  *http.Server
	path string
}

// Start serves v's control socket. It fails if another live process
// already serves one for the same volume on this host.
func Start(v *volume.Volume, log *slog.Logger) (*Server, error) {
	path := Socket(v.Desc().ID)
	// A socket in a directory another user controls could be swapped for
	// theirs: use only directories that are ours and private.
	if err := rundir.Ensure(rundir.Private, rundir.Base(), Dir()); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := InUse(v.Desc().ID); err != nil {
		return nil, err
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// The directory is private already; 0600 keeps the socket ours even if
	// someone loosens it.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, rep Reply, err error) {
		if err != nil {
			rep.Error = err.Error()
			w.WriteHeader(http.StatusConflict)
		}
		json.NewEncoder(w).Encode(rep)
	}
	decode := func(r *http.Request) (Request, error) {
		var req Request
		err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req)
		return req, err
	}
	mux.HandleFunc("POST /checkpoint", func(w http.ResponseWriter, r *http.Request) {
		req, err := decode(r)
		if err != nil {
			reply(w, Reply{}, err)
			return
		}
		c, err := v.Checkpoint(r.Context(), req.Label)
		reply(w, Reply{Checkpoint: c}, err)
	})
	mux.HandleFunc("POST /restore", func(w http.ResponseWriter, r *http.Request) {
		req, err := decode(r)
		if err != nil {
			reply(w, Reply{}, err)
			return
		}
		pt, err := volume.ParsePoint(req.Point)
		if err != nil {
			reply(w, Reply{}, err)
			return
		}
		seq, err := v.Restore(r.Context(), pt)
		reply(w, Reply{Seq: seq}, err)
	})
	mux.HandleFunc("POST /resize", func(w http.ResponseWriter, r *http.Request) {
		req, err := decode(r)
		if err == nil {
			err = v.Resize(r.Context(), req.Size)
		}
		reply(w, Reply{}, err)
	})
	mux.HandleFunc("POST /compact", func(w http.ResponseWriter, r *http.Request) {
		st, err := v.Compact(r.Context(), volume.CompactOptions{})
		reply(w, Reply{Compact: &st}, err)
	})
	cs := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, path: path}
	go func() {
		if err := cs.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("control socket stopped", "err", err)
		}
	}()
	return cs, nil
}

// Close stops serving and removes the socket.
func (c *Server) Close(ctx context.Context) error {
	err := c.srv.Shutdown(ctx)
	os.Remove(c.path)
	return err
}

// Call asks the local process holding volumeID to run op ("checkpoint",
// "restore", "resize", "compact"). It returns served=false if no process holds it here.
func Call(ctx context.Context, volumeID, op string, req Request) (*Reply, bool, error) {
	return CallIn(ctx, rundir.Base(), volumeID, op, req)
}

// SocketIn is the control socket path of volume id for a process whose
// rundir.Base() is base (one started with its own XDG_RUNTIME_DIR).
func SocketIn(base, volumeID string) string { return filepath.Join(base, "ctl", volumeID+".sock") }

// CallIn is Call to the holder whose rundir.Base() is base.
func CallIn(ctx context.Context, base, volumeID, op string, req Request) (*Reply, bool, error) {
	path := SocketIn(base, volumeID)
	// Whoever answers on the socket decides what we report, so talk only to
	// a socket in our own private directories.
	for _, d := range []string{base, filepath.Dir(path)} {
		if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil // nobody serves anything here
		}
		if err := rundir.Check(d, rundir.Private); err != nil {
			return nil, false, fmt.Errorf("control socket: %w", err)
		}
	}
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
	var rep Reply
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return nil, true, fmt.Errorf("control socket %s: bad reply: %w", path, err)
	}
	if rep.Error != "" {
		return &rep, true, errors.New(rep.Error)
	}
	return &rep, true, nil
}
