package appliance

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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
		// One request per connection: a CLI makes a few requests, and an
		// idle keep-alive connection would only hold one of the daemon's
		// control_max_connections.
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
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
		return nil, c.dialError(err)
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

func (c *Client) dialError(err error) error {
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("no tharsis daemon answers on %s: start it with `tharsis run`", c.Socket)
	}
	if errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("may not use %s: the control socket is root only", c.Socket)
	}
	return fmt.Errorf("control socket %s: %w", c.Socket, err)
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

// Role runs `primary` or `secondary` (cmd) on resource res: progress lines
// go to progress as the daemon sends them; the result is the final text.
func (c *Client) Role(ctx context.Context, res, cmd string, force, ignoreSync bool, timeout time.Duration, progress func(string)) (string, error) {
	q := url.Values{}
	if force {
		q.Set("force", "1")
	}
	if ignoreSync {
		q.Set("ignore_sync", "1")
	}
	if timeout > 0 {
		q.Set("timeout", timeout.String())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://tharsis/v0/role/"+url.PathEscape(res)+"/"+cmd+"?"+q.Encode(), nil)
	if err != nil {
		return "", err
	}
	hc := c.http()
	hc.Timeout = 0 // the daemon bounds the command; ctx bounds the wait
	resp, err := hc.Do(req)
	if err != nil {
		return "", c.dialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return "", errors.New(strings.TrimSpace(string(body)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "progress: "):
			if progress != nil {
				progress(strings.TrimPrefix(line, "progress: "))
			}
		case strings.HasPrefix(line, "done: "):
			return strings.TrimPrefix(line, "done: "), nil
		case strings.HasPrefix(line, "error: "):
			return "", errors.New(strings.TrimPrefix(line, "error: "))
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("control socket %s: %w", c.Socket, err)
	}
	return "", errors.New("the daemon ended the answer without a result; see its log and `tharsis view`")
}

// Verb runs an admin verb on a resource ("all" for every resource) and
// returns what the daemon said.
// Resize grows resource res to size bytes (0: the smallest disk of all
// nodes) on the primary.
func (c *Client) Resize(ctx context.Context, res string, size int64) (string, error) {
	body, err := c.do(ctx, http.MethodPost, fmt.Sprintf("/v0/resize/%s?size=%d", res, size))
	return strings.TrimSpace(string(body)), err
}

func (c *Client) Verb(ctx context.Context, res, verb string) (string, error) {
	body, err := c.do(ctx, http.MethodPost, "/v0/resource/"+res+"/"+verb)
	return strings.TrimSpace(string(body)), err
}

// Reload asks the daemon to re-read its config file and apply it; it
// returns what changed. A refused reload changed nothing (the error says
// why).
func (c *Client) Reload(ctx context.Context) (string, error) {
	out, err := c.do(ctx, http.MethodPost, "/v0/reload")
	return strings.TrimSpace(string(out)), err
}

// Delete runs delete-resource on res (force: even while other nodes hold
// it).
func (c *Client) Delete(ctx context.Context, res string, force bool) (string, error) {
	path := "/v0/delete/" + url.PathEscape(res)
	if force {
		path += "?force=1"
	}
	out, err := c.do(ctx, http.MethodPost, path)
	return strings.TrimSpace(string(out)), err
}
