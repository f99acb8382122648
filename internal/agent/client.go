package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/urldisk/urldisk/internal/fleet"
)

// Client calls an agent's API. BaseURL is what the agent publishes in its
// heartbeat: "http://HOST:PORT" or "unix:/path".
type Client struct {
	BaseURL string
	Token   string
	// HTTP, if set, sends the requests (for TCP base URLs).
	HTTP *http.Client
}

// APIError is an error answer from an agent.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("agent API: %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

func (c *Client) client() (*http.Client, string) {
	if path, ok := strings.CutPrefix(c.BaseURL, "unix:"); ok {
		return &http.Client{Transport: &http.Transport{DialContext: unixDialer(path)}}, "http://agent"
	}
	if c.HTTP != nil {
		return c.HTTP, c.BaseURL
	}
	return &http.Client{Transport: &http.Transport{Proxy: nil}}, c.BaseURL
}

// unixDialer dials the unix socket at path whatever address is asked.
func unixDialer(path string) func(ctx context.Context, _, _ string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// Do sends a request with a JSON body (if in is not nil) and decodes a
// JSON answer into out (if not nil). Error answers are *APIError.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	hc, base := c.client()
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("agent API %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("agent API %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var er ErrorReply
		if json.Unmarshal(b, &er) != nil || er.Error == "" {
			er.Error = strings.TrimSpace(string(b))
		}
		return &APIError{Status: resp.StatusCode, Message: er.Error}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("agent API %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// Reconcile asks the agent to reconcile now.
func (c *Client) Reconcile(ctx context.Context) error {
	return c.Do(ctx, http.MethodPost, "/v1/reconcile", nil, nil)
}

// Status returns the agent's current heartbeat document.
func (c *Client) Status(ctx context.Context) (*fleet.Heartbeat, error) {
	var h fleet.Heartbeat
	if err := c.Do(ctx, http.MethodGet, "/v1/status", nil, &h); err != nil {
		return nil, err
	}
	return &h, nil
}
