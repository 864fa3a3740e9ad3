package mqtthookstest_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// fakeTB records what a helper reports.
type fakeTB struct {
	testing.TB
	errors []string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Fatalf(format string, args ...any) { f.Errorf(format, args...) }

func TestRecorderExpectHooks(t *testing.T) {
	rec := new(mqtthookstest.Recorder)
	id := mqtthooks.SubscriberID{ClientID: "c1"}
	rec.OnClientWakeup(t.Context(), &mqtthooks.SessionEvent{SubscriberID: id})
	rec.OnClientGone(t.Context(), &mqtthooks.SessionEvent{SubscriberID: id})

	var ok, bad fakeTB
	rec.ExpectHooks(&ok, id, "OnClientWakeup", "OnClientGone")
	rec.ExpectHooks(&bad, id, "OnClientWakeup", "OnClientOffline")

	assert.Empty(t, ok.errors)
	require.Len(t, bad.errors, 1)
	assert.Contains(t, bad.errors[0], "OnClientWakeup → OnClientGone")
	assert.Contains(t, bad.errors[0], "OnClientWakeup → OnClientOffline")
	assert.Equal(t, 1, rec.Count(id, "OnClientGone"))
	rec.Reset()
	assert.Empty(t, rec.Calls())
}

// The Recorder notices two lifecycle hooks of one id running at once.
func TestRecorderOverlaps(t *testing.T) {
	rec := new(mqtthookstest.Recorder)
	inside, release := make(chan struct{}), make(chan struct{})
	rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnClientWakeup" {
			close(inside)
			<-release
		}
	}
	id := mqtthooks.SubscriberID{ClientID: "c1"}
	var wg sync.WaitGroup
	wg.Go(func() { rec.OnClientWakeup(context.Background(), &mqtthooks.SessionEvent{SubscriberID: id}) })
	<-inside
	rec.OnClientGone(t.Context(), &mqtthooks.SessionEvent{SubscriberID: id})
	rec.OnClientGone(t.Context(), &mqtthooks.SessionEvent{SubscriberID: mqtthooks.SubscriberID{ClientID: "other"}})
	close(release)
	wg.Wait()

	assert.Equal(t, []string{"OnClientGone of c1 ran during OnClientWakeup"}, rec.Overlaps())
}

// Without answer funcs a Recorder decides nothing.
func TestRecorderAnswersNext(t *testing.T) {
	rec := new(mqtthookstest.Recorder)
	req := &mqtthooks.RegisterRequest{Connect: &mqtthooks.ConnectRequest{Password: []byte("p")}}
	assert.Equal(t, mqtthooks.VerdictNext, rec.AuthOnRegister(t.Context(), req).Verdict())
	assert.Equal(t, mqtthooks.VerdictNext, rec.AuthOnRegisterM5(t.Context(), req).Verdict())
	assert.Equal(t, mqtthooks.AuthVerdictNext, rec.OnAuthM5(t.Context(), &mqtthooks.AuthRequest{}).Verdict())
	req.Connect.Password[0] = 'x'
	c, _ := rec.Last(mqtthooks.SubscriberID{}, "AuthOnRegister")
	assert.Equal(t, []byte("p"), c.Register.Connect.Password, "the Recorder keeps copies")
}

func TestConn(t *testing.T) {
	c := mqtthookstest.NewConn()
	c.Notify()
	c.Notify() // never blocks
	<-c.Notified()
	assert.Equal(t, 2, c.NotifyCount())

	release := c.Block()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Disconnect(mqtthooks.CodeSessionTakenOver)
	}()
	<-c.Disconnected()
	select {
	case <-done:
		t.Fatal("Disconnect returned while blocked")
	default:
	}
	release()
	<-done
	release() // twice is harmless
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}, c.Disconnects())
}
