package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" { // the crash test's broker process
		main()
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// testBroker is a running broker on a loopback port.
type testBroker struct {
	*broker
	addr   string
	rec    *mqtthookstest.Recorder
	served chan error // serve's result
}

// startBroker runs a broker with f (its address is chosen here) and a
// Recorder plugin that decides nothing, until the test ends.
func startBroker(t *testing.T, f flags) *testBroker {
	t.Helper()
	f.addr = "127.0.0.1:0"
	if f.maxPacketSize == 0 {
		f.maxPacketSize = 1 << 20
	}
	if f.maxQueued == 0 {
		f.maxQueued = 1000
	}
	b, err := build(&f, testLogger(t))
	require.NoError(t, err)
	tb := serveBroker(t, b)
	t.Cleanup(func() { tb.stop(t) })
	return tb
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// serveBroker adds a Recorder plugin to b and runs its server; stop ends it.
func serveBroker(t *testing.T, b *broker) *testBroker {
	t.Helper()
	rec := new(mqtthookstest.Recorder)
	require.NoError(t, b.chain.Register("recorder", rec))
	require.NoError(t, b.srv.listen())
	served := make(chan error, 1)
	go func() { served <- b.srv.serve() }()
	return &testBroker{broker: b, addr: b.srv.addr().String(), rec: rec, served: served}
}

// stop shuts the broker down and checks that it did so cleanly.
func (b *testBroker) stop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.srv.shutdown(ctx); !errors.Is(err, mqtthooks.ErrShutdown) {
		assert.NoError(t, err)
	}
	assert.NoError(t, <-b.served)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// v3Client connects an MQTT 3.1.1 client with paho.mqtt.golang.
func v3Client(t *testing.T, addr, id, user, pass string, clean bool, opts ...func(*pahov3.ClientOptions)) (pahov3.Client, error) {
	t.Helper()
	o := pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).SetConnectTimeout(5 * time.Second)
	if user != "" {
		o.SetUsername(user).SetPassword(pass)
	}
	for _, opt := range opts {
		opt(o)
	}
	c := pahov3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatal("CONNECT timed out")
	}
	return c, tok.Error()
}

func TestV3PublishSubscribe(t *testing.T) {
	b := startBroker(t, flags{})
	sub, err := v3Client(t, b.addr, "sub", "", "", true)
	require.NoError(t, err)
	defer sub.Disconnect(100)
	got := make(chan string, 10)
	tok := sub.Subscribe("a/+", 1, func(_ pahov3.Client, m pahov3.Message) { got <- string(m.Payload()) })
	require.True(t, tok.WaitTimeout(5*time.Second))
	require.NoError(t, tok.Error())

	pub, err := v3Client(t, b.addr, "pub", "", "", true)
	require.NoError(t, err)
	defer pub.Disconnect(100)
	require.NoError(t, waitToken(pub.Publish("a/b", 1, false, "hello")))
	select {
	case m := <-got:
		assert.Equal(t, "hello", m)
	case <-time.After(5 * time.Second):
		t.Fatal("no message")
	}
}

func waitToken(tok pahov3.Token) error {
	if !tok.WaitTimeout(5 * time.Second) {
		return context.DeadlineExceeded
	}
	return tok.Error()
}

var _ = net.Dial
