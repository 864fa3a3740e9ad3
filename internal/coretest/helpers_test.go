package mqtthooks_test

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqtthooks/mqtthooks"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// callLog records, in order, which plugin was called.
type callLog struct {
	mu    sync.Mutex
	names []string
}

func (l *callLog) add(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.names = append(l.names, name)
}

func (l *callLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.names...)
}

// registerAuth registers a plugin that records its call and answers r.
func registerAuth(t *testing.T, c *mqtthooks.Chain, name string, log *callLog, r mqtthooks.RegisterResult,
	opts ...mqtthooks.PluginOption) {
	t.Helper()
	require.NoError(t, c.Register(name, mqtthooks.AuthOnRegisterFunc(
		func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			log.add(name)
			return r
		}), opts...))
}

// logBuffer is a concurrency-safe buffer for a slog text handler.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newLoggedChain returns a chain that logs into the returned buffer.
func newLoggedChain() (*mqtthooks.Chain, *logBuffer) {
	buf := new(logBuffer)
	return mqtthooks.NewChain(mqtthooks.ChainOptions{Logger: slog.New(slog.NewTextHandler(buf, nil))}), buf
}

func v3Request(clientID string) *mqtthooks.RegisterRequest {
	return &mqtthooks.RegisterRequest{
		SubscriberID: mqtthooks.SubscriberID{ClientID: clientID},
		Connect:      &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT311, ClientID: clientID},
		Conn:         &mqtthooks.ConnInfo{Listener: "default", Transport: "tcp"},
	}
}
