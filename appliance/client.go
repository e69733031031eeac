package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Client talks to a running daemon's control socket.
type Client struct {
	Socket string // path of the node's control socket
}

func (c *Client) http() *http.Client {
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", c.Socket)
		}},
	}
}

func (c *Client) do(ctx context.Context, method, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://tharsis"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("no tharsis daemon answers on %s: start it with `tharsis run`", c.Socket)
		}
		if errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("may not use %s: the control socket is root only", c.Socket)
		}
		return nil, fmt.Errorf("control socket %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, errors.New(strings.TrimSpace(string(body)))
	}
	return body, nil
}

// Status returns the node's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	body, err := c.do(ctx, http.MethodGet, "/v0/status")
	if err != nil {
		return nil, err
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("daemon sent a status this tharsis cannot read: %w", err)
	}
	return &st, nil
}

// Verb runs an admin verb on a resource ("all" for every resource) and
// returns what the daemon said.
func (c *Client) Verb(ctx context.Context, res, verb string) (string, error) {
	body, err := c.do(ctx, http.MethodPost, "/v0/resource/"+res+"/"+verb)
	return strings.TrimSpace(string(body)), err
}
