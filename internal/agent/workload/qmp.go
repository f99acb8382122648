package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// QMP is a client connection to qemu's machine protocol: JSON objects, one
// per line; the server greets, the client negotiates with
// qmp_capabilities, then each {"execute": ...} gets a {"return": ...} or
// an {"error": ...}, with asynchronous {"event": ...} messages anywhere in
// between. Not safe for concurrent use.
type QMP struct {
	conn net.Conn
	dec  *json.Decoder
}

// qmpMessage is any message from the server.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// DialQMP connects to a QMP unix socket, reads the greeting and enters
// command mode.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	q := &QMP{conn: conn, dec: json.NewDecoder(conn)}
	stop := q.deadline(ctx)
	defer stop()
	var greet qmpMessage
	if err := q.dec.Decode(&greet); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting: %w", err)
	}
	if greet.QMP == nil {
		conn.Close()
		return nil, errors.New("qmp: the server did not greet with a QMP banner")
	}
	if err := q.execute("qmp_capabilities"); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// deadline applies ctx's deadline (and cancellation) to the connection.
func (q *QMP) deadline(ctx context.Context) (stop func()) {
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetDeadline(dl)
	} else {
		q.conn.SetDeadline(time.Time{})
	}
	done := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Unix(1, 0)) })
	return func() { done() }
}

// Execute runs a command without arguments and waits for its answer.
func (q *QMP) Execute(ctx context.Context, command string) error {
	stop := q.deadline(ctx)
	defer stop()
	return q.execute(command)
}

func (q *QMP) execute(command string) error {
	b, _ := json.Marshal(map[string]string{"execute": command})
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	for {
		var m qmpMessage
		if err := q.dec.Decode(&m); err != nil {
			return fmt.Errorf("qmp %s: %w", command, err)
		}
		switch {
		case m.Error != nil:
			return fmt.Errorf("qmp %s: %s: %s", command, m.Error.Class, m.Error.Desc)
		case m.Return != nil:
			return nil
		}
		// An event (or anything else): keep reading for our answer.
	}
}

// Quit asks qemu to exit at once. qemu may close the connection before
// answering; that counts as success.
func (q *QMP) Quit(ctx context.Context) error {
	err := q.Execute(ctx, "quit")
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	return err
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }
