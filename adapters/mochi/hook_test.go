package mochi_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/adapters/mochi"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// broker is an unmodified mochi server with the Hook and a Recorder in its
// chain, listening on a loopback port or, for tests under synctest, on
// in-memory pipes.
type broker struct {
	server *mqtt.Server
	rec    *mqtthookstest.Recorder
	chain  *mqtthooks.Chain
	addr   string
	pipes  *pipeListener

	closeOnce sync.Once
}

// newBroker starts the broker. setup, if not nil, configures the Recorder
// first: once the server serves, its connections' goroutines read it.
func newBroker(t *testing.T, opts mochi.Options, pipes bool, setup func(*mqtthookstest.Recorder)) *broker {
	t.Helper()
	b := &broker{rec: &mqtthookstest.Recorder{Accept: true}}
	if setup != nil {
		setup(b.rec)
	}
	b.chain = mqtthooks.NewChain(mqtthooks.ChainOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, b.chain.Register("recorder", b.rec))
	opts.Chain = b.chain
	b.server = mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	hook, err := mochi.New(b.server, opts)
	require.NoError(t, err)
	require.NoError(t, b.server.AddHook(hook, nil))
	var ln net.Listener
	if pipes {
		b.pipes = newPipeListener()
		ln = b.pipes
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
	}
	b.addr = ln.Addr().String()
	require.NoError(t, b.server.AddListener(listeners.NewNet("tcp", ln)))
	require.NoError(t, b.server.Serve())
	t.Cleanup(func() { b.close(t) })
	return b
}

// close closes the server once no ended connection is still to be deleted: mochi
// v2.7.9's Server.Close deadlocks when a client is added to or deleted from
// its Clients while Close lists them (a recursive read lock,
// mochi-mqtt/server#488), and a clean session is deleted just after its
// connection ended.
func (b *broker) close(t *testing.T) {
	b.closeOnce.Do(func() {
		assert.Eventually(t, func() bool {
			for _, cl := range b.server.Clients.GetAll() {
				p := &cl.Properties
				expiring := (p.ProtocolVersion == 5 && p.Props.SessionExpiryInterval == 0) || (p.ProtocolVersion < 5 && p.Clean)
				if cl.Closed() && expiring && !cl.IsTakenOver() { // its Delete is still to come
					return false
				}
			}
			return true
		}, 10*time.Second, time.Millisecond, "the server's connections end")
		_ = b.server.Close()
		if b.pipes != nil {
			_ = b.pipes.Close()
		}
	})
}

// dial returns a connection to the broker.
func (b *broker) dial(t *testing.T) net.Conn {
	t.Helper()
	if b.pipes != nil {
		return b.pipes.dial()
	}
	nc, err := net.Dial("tcp", b.addr)
	require.NoError(t, err)
	return nc
}

// connect5 connects an MQTT 5 client with paho.golang and returns the client
// and the CONNACK.
func (b *broker) connect5(t *testing.T, id, user string, clean bool, sei uint32) (*paho.Client, *paho.Connack, error) {
	t.Helper()
	c := paho.NewClient(paho.ClientConfig{Conn: b.dial(t)})
	cp := &paho.Connect{ClientID: id, CleanStart: clean, KeepAlive: 30,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &sei, RequestProblemInfo: true}}
	if user != "" {
		cp.Username, cp.UsernameFlag = user, true
		cp.Password, cp.PasswordFlag = []byte("pw"), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, cp)
	return c, ack, err
}

// connect3 connects an MQTT 3.1.1 client with paho.mqtt.golang and returns
// the client and its CONNACK return code.
func (b *broker) connect3(t *testing.T, id, user string, clean bool) (paho3.Client, byte) {
	t.Helper()
	opts := paho3.NewClientOptions().AddBroker("tcp://" + b.addr).SetClientID(id).SetCleanSession(clean).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
	if user != "" {
		opts.SetUsername(user).SetPassword("pw")
	}
	if b.pipes != nil {
		opts.SetCustomOpenConnectionFn(func(*url.URL, paho3.ClientOptions) (net.Conn, error) { return b.pipes.dial(), nil })
	}
	c := paho3.NewClient(opts)
	tok := c.Connect()
	tok.Wait()
	return c, tok.(*paho3.ConnectToken).ReturnCode()
}

func sid(id string) mqtthooks.SubscriberID { return mqtthooks.SubscriberID{ClientID: id} }

// eventually waits, without sleeping, until cond holds or 5 s pass.
func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	require.Eventually(t, cond, 5*time.Second, time.Millisecond, what)
}

// M1: the chain's reason code reaches a v5 client as is, and a v3 client as
// the return code mqtthooks maps it to (mochi would write 0x8A raw).
func TestM1RejectCode(t *testing.T) {
	b := newBroker(t, mochi.Options{}, false, func(r *mqtthookstest.Recorder) {
		r.AuthOnRegisterFunc = func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			return mqtthooks.RejectCode(mqtthooks.CodeBanned, "banned here", "")
		}
		r.AuthOnRegisterM5Func = r.AuthOnRegisterFunc
	})

	_, ack, err := b.connect5(t, "c5", "u", true, 0)
	require.Error(t, err)
	require.NotNil(t, ack)
	assert.Equal(t, byte(0x8A), ack.ReasonCode)
	require.NotNil(t, ack.Properties)
	assert.Equal(t, "banned here", ack.Properties.ReasonString)

	_, rc := b.connect3(t, "c3", "u", true)
	assert.Equal(t, byte(5), rc, "v3: not authorized")
	assert.Equal(t, []string{"AuthOnRegister"}, b.rec.Hooks(sid("c3")))
	assert.Equal(t, []string{"AuthOnRegisterM5"}, b.rec.Hooks(sid("c5")))
}

// M2: a v3 client rejected with ErrInvalidCredentials gets return code 4.
func TestM2InvalidCredentials(t *testing.T) {
	b := newBroker(t, mochi.Options{}, false, func(r *mqtthookstest.Recorder) {
		r.AuthOnRegisterFunc = func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
		}
		r.AuthOnRegisterM5Func = r.AuthOnRegisterFunc
	})
	_, rc := b.connect3(t, "c3", "u", true)
	assert.Equal(t, byte(4), rc)

	_, ack, err := b.connect5(t, "c5", "u", true, 0)
	require.Error(t, err)
	assert.Equal(t, byte(0x86), ack.ReasonCode)
}

// M3: an accepted CONNECT fires OnClientWakeup and OnRegister before mochi
// writes the CONNACK.
func TestM3OnRegisterBeforeConnack(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	b := newBroker(t, mochi.Options{}, false, func(r *mqtthookstest.Recorder) {
		r.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
			if c.Hook == "OnRegister" {
				close(entered)
				<-release
			}
		}
	})
	type result struct {
		c  paho3.Client
		rc byte
	}
	done := make(chan result, 1)
	go func() {
		c, rc := b.connect3(t, "c3", "u", false)
		done <- result{c, rc}
	}()
	<-entered
	select {
	case <-done:
		t.Fatal("the CONNACK went out before OnRegister returned")
	default:
	}
	close(release)
	r := <-done
	assert.Equal(t, byte(0), r.rc)
	defer r.c.Disconnect(100)
	assert.Equal(t, []string{"AuthOnRegister", "OnClientWakeup", "OnRegister"}, b.rec.Hooks(sid("c3")))
	reg, _ := b.rec.Last(sid("c3"), "OnRegister")
	assert.False(t, reg.SessionPresent)
	assert.Equal(t, "u", reg.Event.Username)
	assert.True(t, reg.Event.Peer.IsValid())
}

// M4: a v5 client with Session Expiry Interval 0 ends its session with the
// connection (OnClientGone); with 30 the session goes offline and expires
// 30 to 31 s later (mochi checks once a second): OnSessionExpired.
func TestM4DisconnectAndExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBroker(t, mochi.Options{}, true, nil)
		c, ack, err := b.connect5(t, "clean", "u", true, 0)
		require.NoError(t, err)
		assert.Equal(t, byte(0), ack.ReasonCode)
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0}) // mochi may close the pipe before paho is done with it
		synctest.Wait()
		b.rec.ExpectHooks(t, sid("clean"), "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5", "OnClientGone")
		gone, _ := b.rec.Last(sid("clean"), "OnClientGone")
		assert.Equal(t, mqtthooks.ReasonClientDisconnect, gone.Event.Reason)
		assert.True(t, gone.Event.HasCode)

		c, _, err = b.connect5(t, "kept", "u", true, 30)
		require.NoError(t, err)
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		synctest.Wait()
		offlineAt := time.Now()
		b.rec.ExpectHooks(t, sid("kept"), "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5", "OnClientOffline")
		var expiredAt time.Time
		for range 40 {
			time.Sleep(time.Second)
			synctest.Wait()
			if b.rec.Count(sid("kept"), "OnSessionExpired") > 0 {
				expiredAt = time.Now()
				break
			}
		}
		require.False(t, expiredAt.IsZero(), "the session never expired")
		after := expiredAt.Sub(offlineAt)
		assert.True(t, after >= 30*time.Second && after <= 32*time.Second, "expired %v after going offline", after)
		expired, _ := b.rec.Last(sid("kept"), "OnSessionExpired")
		assert.Equal(t, mqtthooks.ReasonExpired, expired.Event.Reason)
		off, _ := b.rec.Last(sid("kept"), "OnClientOffline")
		assert.Equal(t, off.Event.Generation, expired.Event.Generation)
		b.close(t)
	})
}

// M5: a second CONNECT with the same client id takes the session over: the
// old session's end (Offline{TakenOver}, 0x8E) is reported before the new
// connection's Wakeup, and the new one resumes the same life with SP 1.
func TestM5Takeover(t *testing.T) {
	b := newBroker(t, mochi.Options{}, false, nil)
	first, ack, err := b.connect5(t, "s", "u", false, 300)
	require.NoError(t, err)
	assert.False(t, ack.SessionPresent)
	second, ack, err := b.connect5(t, "s", "u", false, 300)
	require.NoError(t, err)
	assert.True(t, ack.SessionPresent)
	defer second.Disconnect(&paho.Disconnect{})

	b.rec.ExpectHooks(t, sid("s"), "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5",
		"AuthOnRegisterM5", "OnClientOffline", "OnClientWakeup", "OnRegisterM5")
	off, _ := b.rec.Last(sid("s"), "OnClientOffline")
	assert.Equal(t, mqtthooks.ReasonTakenOver, off.Event.Reason)
	assert.Equal(t, mqtthooks.CodeSessionTakenOver, off.Event.Code)
	var gens []uint64
	for _, c := range b.rec.CallsFor(sid("s")) {
		if c.Hook == "OnClientWakeup" || c.Hook == "OnClientOffline" {
			gens = append(gens, c.Event.Generation)
		}
	}
	assert.Equal(t, []uint64{gens[0], gens[0], gens[0]}, gens, "one life")
	reg, _ := b.rec.Last(sid("s"), "OnRegisterM5")
	assert.True(t, reg.SessionPresent)

	// The old connection ends a moment later, and reports nothing more.
	eventually(t, func() bool { return isClosed(first.Done()) }, "the old connection's end")
	assert.Equal(t, 1, b.rec.Count(sid("s"), "OnClientOffline"))
	assert.Empty(t, b.rec.Overlaps())
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// A clean start discards the existing session: OnClientGone{CleanStart} for
// the old life, then a new life.
func TestCleanStartDiscards(t *testing.T) {
	b := newBroker(t, mochi.Options{}, false, nil)
	c3, rc := b.connect3(t, "s", "u", false)
	require.Equal(t, byte(0), rc)
	c3.Disconnect(100)
	eventually(t, func() bool { return b.rec.Count(sid("s"), "OnClientOffline") == 1 }, "offline")

	c, rc := b.connect3(t, "s", "u", true)
	require.Equal(t, byte(0), rc)
	defer c.Disconnect(100)
	b.rec.ExpectHooks(t, sid("s"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "OnClientOffline",
		"AuthOnRegister", "OnClientGone", "OnClientWakeup", "OnRegister")
	gone, _ := b.rec.Last(sid("s"), "OnClientGone")
	wake, _ := b.rec.Last(sid("s"), "OnClientWakeup")
	assert.Equal(t, mqtthooks.ReasonCleanStart, gone.Event.Reason)
	assert.NotEqual(t, gone.Event.Generation, wake.Event.Generation, "a new life")
}

// The resume policy (SameUsername by default), which mochi does not have:
// bob cannot take alice's session over, online or offline.
func TestResumeByAnotherUserRefused(t *testing.T) {
	b := newBroker(t, mochi.Options{}, false, nil)
	alice, _, err := b.connect5(t, "s", "alice", false, 300)
	require.NoError(t, err)
	_, ack, err := b.connect5(t, "s", "bob", false, 300)
	require.Error(t, err)
	assert.Equal(t, byte(0x87), ack.ReasonCode)
	_, rc := b.connect3(t, "s", "bob", true)
	assert.Equal(t, byte(5), rc)
	select {
	case <-alice.Done():
		t.Fatal("alice's connection was ended")
	default:
	}
	assert.Zero(t, b.rec.Count(sid("s"), "OnClientOffline"))
	require.NoError(t, alice.Disconnect(&paho.Disconnect{}))
}

// Modifiers mochi has a place for are applied (the username); any other
// rejects with ErrInvalidModifiers naming it, rather than being ignored.
func TestModifiers(t *testing.T) {
	b := newBroker(t, mochi.Options{}, false, func(r *mqtthookstest.Recorder) {
		r.AuthOnRegisterFunc = func(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			if req.Connect.ClientID == "queue" {
				return mqtthooks.AcceptWith(&mqtthooks.Modifiers{MaxOfflineMessages: mqtthooks.Some(10)})
			}
			return mqtthooks.AcceptWith(&mqtthooks.Modifiers{Username: mqtthooks.Some("tenant-1/u")})
		}
	})
	c, rc := b.connect3(t, "named", "u", true)
	require.Equal(t, byte(0), rc)
	reg, _ := b.rec.Last(sid("named"), "OnRegister")
	assert.Equal(t, "tenant-1/u", reg.Event.Username)
	c.Disconnect(100)

	_, rc = b.connect3(t, "queue", "u", true)
	assert.Equal(t, byte(3), rc, "0x88 for MQTT 3: server unavailable")
}

// A plugin that implements the hooks a plugin would: the Recorder sees the
// grammar of a life through connects, a takeover and the end.
func TestRecorderSeesGrammar(t *testing.T) {
	b := newBroker(t, mochi.Options{}, false, nil)
	c1, rc := b.connect3(t, "g", "u", false)
	require.Equal(t, byte(0), rc)
	c2, rc := b.connect3(t, "g", "u", false) // takes over
	require.Equal(t, byte(0), rc)
	eventually(t, func() bool { return !c1.IsConnectionOpen() }, "the first connection closed")
	c2.Disconnect(100)
	eventually(t, func() bool { return b.rec.Count(sid("g"), "OnClientOffline") == 2 }, "offline")
	b.rec.ExpectHooks(t, sid("g"), "AuthOnRegister", "OnClientWakeup", "OnRegister",
		"AuthOnRegister", "OnClientOffline", "OnClientWakeup", "OnRegister", "OnClientOffline")
	assert.Empty(t, b.rec.Overlaps())
}

func TestNewValidates(t *testing.T) {
	_, err := mochi.New(nil, mochi.Options{Chain: mqtthooks.NewChain(mqtthooks.ChainOptions{})})
	assert.ErrorIs(t, err, mqtthooks.ErrInvalidArgument)
	_, err = mochi.New(mqtt.New(nil), mochi.Options{})
	assert.ErrorIs(t, err, mqtthooks.ErrInvalidArgument)
}

// pipeListener is a net.Listener of in-memory connections, so that a broker
// and its clients run inside a synctest bubble.
type pipeListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) dial() net.Conn {
	server, client := net.Pipe()
	select {
	case l.conns <- server:
	case <-l.done:
	}
	return client
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, errors.New("listener closed")
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }
