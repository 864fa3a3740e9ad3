package mqtthookstest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/mqtthooks/mqtthooks"
)

// Conn is a fake mqtthooks.Conn: it records what the Core asks of it. Its
// zero value is not usable; create it with NewConn.
type Conn struct {
	notify chan struct{}

	mu           sync.Mutex
	notified     int
	disconnects  []mqtthooks.ReasonCode
	disconnected chan struct{} // closed by the first Disconnect
	block        chan struct{} // while set, Disconnect waits for it to close
}

// NewConn returns a fake connection.
func NewConn() *Conn {
	return &Conn{notify: make(chan struct{}, 1), disconnected: make(chan struct{})}
}

// Notify records the call and signals Notified; it never blocks.
func (c *Conn) Notify() {
	c.mu.Lock()
	c.notified++
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// Disconnect records the code. While the Conn is blocked (Block), it waits.
func (c *Conn) Disconnect(code mqtthooks.ReasonCode) {
	c.mu.Lock()
	c.disconnects = append(c.disconnects, code)
	if len(c.disconnects) == 1 {
		close(c.disconnected)
	}
	block := c.block
	c.mu.Unlock()
	if block != nil {
		<-block
	}
}

// Notified receives a value after Notify was called (at most one pending).
func (c *Conn) Notified() <-chan struct{} { return c.notify }

// NotifyCount returns how often Notify was called.
func (c *Conn) NotifyCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.notified
}

// Disconnected is closed once the Core called Disconnect.
func (c *Conn) Disconnected() <-chan struct{} { return c.disconnected }

// Disconnects returns the codes of the Core's Disconnect calls, in order.
func (c *Conn) Disconnects() []mqtthooks.ReasonCode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.disconnects)
}

// Block makes Disconnect hang, as a stuck socket would, until release is
// called.
func (c *Conn) Block() (release func()) {
	ch := make(chan struct{})
	c.mu.Lock()
	c.block = ch
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			c.block = nil
			c.mu.Unlock()
			close(ch)
		})
	}
}

// Sent is a packet the Core asked the broker to send.
type Sent struct {
	// Packet is "CONNACK", "AUTH" or "DISCONNECT".
	Packet  string
	Connack *mqtthooks.Connack
	Auth    *mqtthooks.AuthPacket
	Code    mqtthooks.ReasonCode
}

// Client is a fake MQTT client on a fake connection: it drives a Core's step
// API as a broker would for one connection, and records what the Core asked
// the broker to send. A Client is used by one goroutine at a time.
type Client struct {
	Core *mqtthooks.Core
	Conn *Conn
	// Info describes the fake connection; NewClient fills it.
	Info mqtthooks.ConnInfo
	// ManualStart leaves Session.Start to the test.
	ManualStart bool

	Handshake *mqtthooks.Handshake
	// Step is the last step the Core returned.
	Step mqtthooks.Step
	// Session is the session of an accepted CONNACK.
	Session *mqtthooks.Session
	// Sent is everything the Core asked the broker to send, in order.
	Sent []Sent
	// Closed is set once the connection would be closed.
	Closed bool
}

var connIDs atomic.Uint64

// NewClient returns a Client on a new fake connection of listener "default".
func NewClient(core *mqtthooks.Core) *Client {
	id := connIDs.Add(1)
	return &Client{
		Core: core,
		Conn: NewConn(),
		Info: mqtthooks.ConnInfo{
			Listener:  "default",
			Transport: "tcp",
			Local:     netip.MustParseAddrPort("127.0.0.1:1883"),
			Peer:      netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(10000+id%50000)),
			ConnID:    id,
		},
	}
}

// Connect sends req and follows the Core's first step: it records the
// CONNACK or AUTH, and starts an accepted session unless ManualStart is set.
func (c *Client) Connect(ctx context.Context, req *mqtthooks.ConnectRequest) mqtthooks.Step {
	h, step := c.Core.Connect(ctx, &c.Info, req, c.Conn)
	c.Handshake = h
	return c.follow(step)
}

// Auth answers an AUTH 0x18 with data, continuing an enhanced
// authentication with the CONNECT's method.
func (c *Client) Auth(ctx context.Context, data []byte) mqtthooks.Step {
	method := ""
	if c.Step.Auth != nil {
		method = c.Step.Auth.Method
	}
	return c.follow(c.Handshake.Auth(ctx, &mqtthooks.AuthPacket{
		ReasonCode: mqtthooks.CodeContinueAuthentication, Method: method, Data: data}))
}

func (c *Client) follow(step mqtthooks.Step) mqtthooks.Step {
	c.Step = step
	switch step.Kind {
	case mqtthooks.SendConnack:
		c.Sent = append(c.Sent, Sent{Packet: "CONNACK", Connack: step.Connack})
		if step.Session == nil {
			c.Closed = true
			break
		}
		c.Session = step.Session
		if !c.ManualStart {
			if err := c.Session.Start(); err != nil {
				panic(fmt.Sprintf("mqtthookstest: Start: %v", err))
			}
		}
	case mqtthooks.SendAuth:
		c.Sent = append(c.Sent, Sent{Packet: "AUTH", Auth: step.Auth})
	case mqtthooks.CloseConnection:
		c.Closed = true
	}
	return step
}

// Connack returns the CONNACK the Core decided, or nil.
func (c *Client) Connack() *mqtthooks.Connack {
	for i := len(c.Sent) - 1; i >= 0; i-- {
		if c.Sent[i].Packet == "CONNACK" {
			return c.Sent[i].Connack
		}
	}
	return nil
}

// Accepted reports whether the CONNECT was accepted.
func (c *Client) Accepted() bool { return c.Session != nil }

// Pull pulls what the session has for the connection, as a broker's write
// loop would. An *mqtthooks.EndedError is recorded as the DISCONNECT the
// broker sends.
func (c *Client) Pull() ([]mqtthooks.Delivery, error) {
	if c.Session == nil {
		return nil, mqtthooks.ErrSessionEnded
	}
	buf := make([]mqtthooks.Delivery, 64)
	n, err := c.Session.Pull(buf)
	var ended *mqtthooks.EndedError
	if errors.As(err, &ended) {
		c.Sent = append(c.Sent, Sent{Packet: "DISCONNECT", Code: ended.Code})
		c.Closed = true
	}
	return buf[:n], err
}

// PullAll pulls until the session has nothing more for now, as a broker's
// write loop does after a Notify, and returns everything it got.
func (c *Client) PullAll() ([]mqtthooks.Delivery, error) {
	var all []mqtthooks.Delivery
	for {
		got, err := c.Pull()
		all = append(all, got...)
		if err != nil || len(got) < 64 {
			return all, err
		}
	}
}

// Settle acknowledges d as a client would: PUBACK for QoS 1; PUBREC then
// PUBCOMP for QoS 2 (just PUBCOMP for a PUBREL). QoS 0 needs nothing.
func (c *Client) Settle(d mqtthooks.Delivery) error {
	switch {
	case d.Pubrel:
		return c.Session.Pubcomp(d.PacketID)
	case d.QoS == 1:
		return c.Session.Puback(d.PacketID)
	case d.QoS == 2:
		if err := c.Session.Pubrec(d.PacketID, nil); err != nil {
			return err
		}
		return c.Session.Pubcomp(d.PacketID)
	}
	return nil
}

// Receive pulls and settles until the session has nothing more for now; it
// returns the deliveries in the order they came.
func (c *Client) Receive() ([]mqtthooks.Delivery, error) {
	var all []mqtthooks.Delivery
	for {
		ds, err := c.PullAll()
		if err != nil || len(ds) == 0 {
			return all, err
		}
		all = append(all, ds...)
		for _, d := range ds {
			if err := c.Settle(d); err != nil {
				return all, err
			}
		}
	}
}

// Reauth starts a re-authentication with AUTH 0x19 and data, with the
// CONNECT's method, and records the Core's AUTH reply or the DISCONNECT it
// asks for.
func (c *Client) Reauth(ctx context.Context, method string, data []byte) (*mqtthooks.AuthPacket, error) {
	return c.reauth(ctx, &mqtthooks.AuthPacket{ReasonCode: mqtthooks.CodeReAuthenticate, Method: method, Data: data})
}

// ReauthContinue answers the Core's AUTH 0x18 during a re-authentication.
func (c *Client) ReauthContinue(ctx context.Context, method string, data []byte) (*mqtthooks.AuthPacket, error) {
	return c.reauth(ctx, &mqtthooks.AuthPacket{ReasonCode: mqtthooks.CodeContinueAuthentication, Method: method, Data: data})
}

func (c *Client) reauth(ctx context.Context, in *mqtthooks.AuthPacket) (*mqtthooks.AuthPacket, error) {
	reply, err := c.Session.Reauth(ctx, in)
	var ended *mqtthooks.EndedError
	switch {
	case reply != nil:
		c.Sent = append(c.Sent, Sent{Packet: "AUTH", Auth: reply})
	case errors.As(err, &ended):
		c.Sent = append(c.Sent, Sent{Packet: "DISCONNECT", Code: ended.Code})
		c.Closed = true
	}
	return reply, err
}

// Disconnect sends a DISCONNECT with code. A *mqtthooks.ProtocolError
// answer is recorded as the broker's DISCONNECT.
func (c *Client) Disconnect(ctx context.Context, code mqtthooks.ReasonCode) error {
	return c.disconnected(c.Session.Disconnect(ctx, code))
}

// DisconnectWithExpiry sends an MQTT 5 DISCONNECT with code and the Session
// Expiry Interval sei, like Disconnect.
func (c *Client) DisconnectWithExpiry(ctx context.Context, code mqtthooks.ReasonCode, sei uint32) error {
	return c.disconnected(c.Session.DisconnectWithExpiry(ctx, code, sei))
}

func (c *Client) disconnected(err error) error {
	var pe *mqtthooks.ProtocolError
	if errors.As(err, &pe) {
		c.Sent = append(c.Sent, Sent{Packet: "DISCONNECT", Code: pe.Code})
	}
	c.Closed = true
	return err
}

// Drop loses the connection with err (nil means a network error).
func (c *Client) Drop(ctx context.Context, err error) {
	if err == nil {
		err = fmt.Errorf("mqtthookstest: connection reset")
	}
	c.Session.Lost(ctx, err)
	c.Closed = true
}

// Subscribe subscribes at QoS 1 to each filter.
func (c *Client) Subscribe(ctx context.Context, filters ...string) error {
	subs := make([]mqtthooks.Subscription, len(filters))
	for i, f := range filters {
		subs[i] = mqtthooks.Subscription{Filter: f, QoS: 1}
	}
	return c.Session.Subscribe(ctx, subs...)
}

// V3 returns an MQTT 3.1.1 CONNECT for clientID; user "" means none. The
// password of a user is "secret".
func V3(clientID, user string, clean bool) *mqtthooks.ConnectRequest {
	req := &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT311, ClientID: clientID, CleanStart: clean, KeepAlive: 60}
	if user != "" {
		req.Username, req.HasUsername = user, true
		req.Password, req.HasPassword = []byte("secret"), true
	}
	return req
}

// V5 returns an MQTT 5 CONNECT for clientID with the Session Expiry Interval
// sei; user "" means none. The password of a user is "secret".
func V5(clientID, user string, cleanStart bool, sei uint32) *mqtthooks.ConnectRequest {
	req := V3(clientID, user, cleanStart)
	req.ProtocolVersion = mqtthooks.MQTT5
	req.Properties.SessionExpiryInterval = sei
	return req
}

// ConnectV3 connects an MQTT 3.1.1 client in one line (see V3). It does not
// fail the test when the CONNECT is rejected: check Client.Accepted.
func ConnectV3(ctx context.Context, core *mqtthooks.Core, clientID, user string, clean bool) *Client {
	c := NewClient(core)
	c.Connect(ctx, V3(clientID, user, clean))
	return c
}

// ConnectV5 connects an MQTT 5 client in one line (see V5). It does not fail
// the test when the CONNECT is rejected: check Client.Accepted.
func ConnectV5(ctx context.Context, core *mqtthooks.Core, clientID, user string, cleanStart bool, sei uint32) *Client {
	c := NewClient(core)
	c.Connect(ctx, V5(clientID, user, cleanStart, sei))
	return c
}
