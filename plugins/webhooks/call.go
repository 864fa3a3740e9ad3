package webhooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// maxResponse bounds what is read of an endpoint's answer.
const maxResponse = 1 << 20

// answer is an endpoint's decoded reply: Result is "ok" or "next", or
// Error is set.
type answer struct {
	Result    string
	Error     json.RawMessage // the "error" of {"result": {"error": …}}
	Code      *int            // its "reason_code", if any
	Modifiers map[string]json.RawMessage
	MaxAge    time.Duration // from Cache-Control; 0: not to be cached
}

// post sends data, a JSON request, to e for hook and, with decode, decodes
// the answer. An error wraps ErrTransport (unreachable, timed out) or
// ErrInvalidResponse. A notification's answer is not decoded: VerneMQ
// documents {} and ignores the rest.
func (p *Plugin) post(ctx context.Context, hook string, e *endpoint, data []byte, decode bool) (answer, error) {
	var a answer
	ctx, cancel := context.WithTimeout(ctx, e.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL, bytes.NewReader(data))
	if err != nil {
		return a, fmt.Errorf("%w: %w", ErrTransport, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("vernemq-hook", hook)
	start := time.Now()
	e.stats.requests.Add(1)
	defer func() { e.stats.elapsed.Add(int64(time.Since(start))) }()
	resp, err := p.client.Do(req)
	if err == nil {
		defer resp.Body.Close()
		var raw []byte
		raw, err = io.ReadAll(io.LimitReader(resp.Body, maxResponse))
		if err == nil {
			if resp.StatusCode != http.StatusOK {
				e.stats.errors.Add(1)
				return a, fmt.Errorf("%w: status %d", ErrInvalidResponse, resp.StatusCode)
			}
			if !decode {
				return a, nil
			}
			if err := decodeAnswer(raw, &a); err != nil {
				e.stats.errors.Add(1)
				return a, err
			}
			a.MaxAge, _ = maxAge(resp.Header.Get("Cache-Control"))
			if a.Error != nil {
				e.stats.errors.Add(1)
			}
			return a, nil
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		e.stats.timeouts.Add(1)
	case errors.Is(err, context.Canceled):
		e.stats.canceled.Add(1) // the client went away: not the endpoint's error
		return a, fmt.Errorf("%w: %w", ErrTransport, err)
	default:
		e.stats.errors.Add(1)
	}
	return a, fmt.Errorf("%w: %w", ErrTransport, err)
}

// decodeAnswer reads {"result": "ok"|"next"|{"error": …, "reason_code": n},
// "modifiers": {…}}.
func decodeAnswer(raw []byte, a *answer) error {
	var top struct {
		Result    json.RawMessage `json:"result"`
		Modifiers json.RawMessage `json:"modifiers"`
	}
	if err := json.Unmarshal(raw, &top); err != nil {
		return fmt.Errorf("%w: not JSON: %w", ErrInvalidResponse, err)
	}
	var mods map[string]json.RawMessage
	var list []json.RawMessage
	switch {
	case top.Modifiers == nil, string(top.Modifiers) == "null":
	case json.Unmarshal(top.Modifiers, &list) == nil && len(list) == 0: // VerneMQ's "no modifiers"
	case json.Unmarshal(top.Modifiers, &mods) == nil:
	default:
		return fmt.Errorf("%w: modifiers %s", ErrInvalidResponse, top.Modifiers)
	}
	if top.Result == nil {
		return fmt.Errorf("%w: no result", ErrInvalidResponse)
	}
	var s string
	if json.Unmarshal(top.Result, &s) == nil {
		if s != "ok" && s != "next" {
			return fmt.Errorf("%w: result %q", ErrInvalidResponse, s)
		}
		a.Result, a.Modifiers = s, mods
		return nil
	}
	var e struct {
		Error json.RawMessage `json:"error"`
		Code  *int            `json:"reason_code"`
	}
	if err := json.Unmarshal(top.Result, &e); err != nil {
		return fmt.Errorf("%w: result %s", ErrInvalidResponse, top.Result)
	}
	a.Error, a.Code = e.Error, e.Code
	if a.Code != nil && (*a.Code < 0 || *a.Code > 255) {
		return fmt.Errorf("%w: reason_code %d", ErrInvalidResponse, *a.Code)
	}
	if a.Error == nil {
		a.Error = json.RawMessage(`"unknown_error"`) // as VerneMQ names it
	}
	return nil
}
