package crashcheck

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	packets3 "github.com/eclipse/paho.mqtt.golang/packets"
)

// clientTimeout bounds every wait on the broker.
const clientTimeout = 10 * time.Second

// subscriber is a persistent session with one subscription, and what it
// has read off the wire across all its connections: it behaves as a
// conforming receiver that keeps its state across them, for which a QoS 2
// PUBLISH that comes again with the same packet identifier before its
// PUBREL is the same message.
type subscriber struct {
	name       string
	v5, online bool   // MQTT 5 (else 3.1.1); connected while publishers send (else offline)
	filter     string // its subscription; default crash/#
	qos        byte   // of the subscription; default 2

	mu          sync.Mutex
	seen        map[string]*delivery // by payload
	pending     map[uint16]string    // QoS 2 packet id -> payload, until its PUBREL
	received    int
	redelivered int // dup1 + retrans2
	dup1        int // a message delivered at QoS 0 or 1 that came again
	retrans2    int // a QoS 2 PUBLISH sent again before its PUBREL, same packet id
	dup2        int // a QoS 2 message delivered twice: a problem
	problems    []string
	want        map[string]bool // what await waits for, and has not come yet
	wantDone    chan struct{}

	c5    *paho.Client
	c3    pahov3.Client
	proxy *proxy
}

// subscription returns the filter and QoS, with their defaults.
func (s *subscriber) subscription() (string, byte) {
	return cmp.Or(s.filter, "crash/#"), cmp.Or(s.qos, 2)
}

// matches reports whether the subscriber's filter matches topic.
func (s *subscriber) matches(topic string) bool {
	f, _ := s.subscription()
	return topicMatch(f, topic)
}

// topicMatch reports whether an MQTT topic filter (with + and #, no
// $share) matches a topic name that does not start with $.
func topicMatch(filter, topic string) bool {
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		switch {
		case f == "#":
			return true
		case i >= len(ts):
			return false
		case f != "+" && f != ts[i]:
			return false
		}
	}
	return len(fs) == len(ts)
}

// delivery is what a subscriber knows of one message.
type delivery struct {
	packetID uint16
	released bool // QoS 2: PUBREL received, so the message is delivered for good
}

func (s *subscriber) init() {
	s.seen = map[string]*delivery{}
	s.pending = map[uint16]string{}
}

// publish records a PUBLISH read off the wire. A QoS 2 message may come again
// only with the same packet identifier and before its PUBREL: a receiver
// takes such a repeat for the same message [MQTT-4.3.3-9]. (It need not carry
// DUP: a broker that crashed between sending a PUBLISH and recording that it
// did cannot know it is repeating it.)
func (s *subscriber) publish(packetID uint16, qos byte, topic, payload string) {
	s.mu.Lock()
	s.received++
	d, again := s.seen[payload]
	switch {
	case !s.matches(topic):
		s.problems = append(s.problems, fmt.Sprintf("%s: message %s on %s, which its subscription %s does not match",
			s.name, payload, topic, cmp.Or(s.filter, "crash/#")))
	case !again:
		s.seen[payload] = &delivery{packetID: packetID}
	case qos < 2:
		s.redelivered++
		s.dup1++
	case d.released:
		s.dup2++
		s.problems = append(s.problems, fmt.Sprintf("%s: QoS 2 message %s delivered again after its PUBREL", s.name, payload))
	case packetID != d.packetID:
		s.dup2++
		s.problems = append(s.problems, fmt.Sprintf("%s: QoS 2 message %s delivered twice, with packet ids %d and %d",
			s.name, payload, d.packetID, packetID))
	default:
		s.redelivered++
		s.retrans2++
	}
	if qos == 2 {
		s.pending[packetID] = payload
	}
	if s.want != nil {
		delete(s.want, payload)
		if len(s.want) == 0 {
			close(s.wantDone)
			s.want = nil
		}
	}
	s.mu.Unlock()
}

// await returns a channel closed once every payload in acked (payload ->
// topic) that the subscription matches has been received.
func (s *subscriber) await(acked map[string]string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want, s.wantDone = map[string]bool{}, make(chan struct{})
	for p, topic := range acked {
		if _, ok := s.seen[p]; !ok && s.matches(topic) {
			s.want[p] = true
		}
	}
	if len(s.want) == 0 {
		close(s.wantDone)
		s.want = nil
	}
	return s.wantDone
}

// pubrel records a PUBREL: the QoS 2 message with that identifier is
// delivered and must not come again.
func (s *subscriber) pubrel(packetID uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.pending[packetID]; ok {
		s.seen[p].released = true
		delete(s.pending, packetID)
	}
}

// missing returns the payloads of acked (payload -> topic) that the
// subscription matches and that have not come.
func (s *subscriber) missing(acked map[string]string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for p, topic := range acked {
		if _, ok := s.seen[p]; !ok && s.matches(topic) {
			out = append(out, p)
		}
	}
	return out
}

func (s *subscriber) problem(format string, args ...any) {
	s.mu.Lock()
	s.problems = append(s.problems, s.name+": "+fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

// connect resumes the subscriber's session; first creates it and
// subscribes. A session that should be there and is not is a problem, and
// the subscriber subscribes again to go on. What the broker sends on a
// connection whose CONNECT fails (a CONNACK that comes after the client
// gave up waiting, and what follows it) is not recorded: the client did
// not take it. On an error the caller closes the subscriber before it
// connects again.
func (s *subscriber) connect(ctx context.Context, addr string, first bool) (err error) {
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	g := &gate{decided: make(chan struct{})}
	defer func() { g.decide(err == nil) }()
	decode := func(r io.Reader) error { return s.decodeV3(r, g) }
	if s.v5 {
		decode = func(r io.Reader) error { return s.decodeV5(r, g) }
	}
	p, err := startProxy(ctx, addr, decode)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	s.proxy = p
	present := false
	if s.v5 {
		nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.addr())
		if err != nil {
			return err
		}
		s.c5 = paho.NewClient(paho.ClientConfig{
			Conn: nc,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(paho.PublishReceived) (bool, error) { return true, nil },
			},
			OnClientError:      func(error) {},
			OnServerDisconnect: func(*paho.Disconnect) {},
		})
		never := uint32(0xFFFFFFFF)
		ack, err := s.c5.Connect(ctx, &paho.Connect{ClientID: s.name, CleanStart: first, KeepAlive: 60,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &never}})
		if err != nil {
			return fmt.Errorf("%s: connect: %w", s.name, err)
		}
		present = ack.SessionPresent
	} else {
		o := pahov3.NewClientOptions().AddBroker("tcp://" + p.addr()).SetClientID(s.name).SetCleanSession(false).
			SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).SetConnectTimeout(clientTimeout).
			SetKeepAlive(60 * time.Second).SetOrderMatters(false).
			SetDefaultPublishHandler(func(pahov3.Client, pahov3.Message) {}).
			SetConnectionLostHandler(func(pahov3.Client, error) {})
		s.c3 = pahov3.NewClient(o)
		tok := s.c3.Connect()
		if err := wait(tok); err != nil {
			return fmt.Errorf("%s: connect: %w", s.name, err)
		}
		present = tok.(*pahov3.ConnectToken).SessionPresent()
	}
	g.decide(true)
	switch {
	case first:
	case present:
		return nil
	default:
		s.problem("the session was lost (CONNACK session present 0)")
	}
	if err := s.subscribe(ctx); err != nil {
		return fmt.Errorf("%s: subscribe: %w", s.name, err)
	}
	return nil
}

// gate holds back the recording of what a connection brings until its
// CONNECT has succeeded or failed.
type gate struct {
	once    sync.Once
	ok      bool
	decided chan struct{}
}

// decide records the outcome; the first call counts.
func (g *gate) decide(ok bool) {
	g.once.Do(func() {
		g.ok = ok
		close(g.decided)
	})
}

// wait returns the outcome once it is known.
func (g *gate) wait() bool {
	<-g.decided
	return g.ok
}

func (s *subscriber) subscribe(ctx context.Context) error {
	filter, qos := s.subscription()
	if s.v5 {
		_, err := s.c5.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
		return err
	}
	return wait(s.c3.Subscribe(filter, qos, nil))
}

// close disconnects, if connected, and waits until everything read from
// the connection is recorded.
func (s *subscriber) close() {
	if s.c5 != nil {
		_ = s.c5.Disconnect(&paho.Disconnect{})
		select {
		case <-s.c5.Done():
		case <-time.After(clientTimeout):
		}
		s.c5 = nil
	}
	if s.c3 != nil {
		s.c3.Disconnect(250)
		s.c3 = nil
	}
	if s.proxy != nil {
		s.proxy.close()
		s.proxy = nil
	}
}

// dropped returns a channel closed when the current connection has ended
// (the broker's side or the client's), or nil if there is none.
func (s *subscriber) dropped() <-chan struct{} {
	if s.proxy == nil {
		return nil
	}
	return s.proxy.done
}

func (s *subscriber) decodeV5(r io.Reader, g *gate) error {
	for {
		cp, err := packets.ReadPacket(r)
		if err != nil {
			return err
		}
		switch p := cp.Content.(type) {
		case *packets.Publish:
			if g.wait() {
				s.publish(p.PacketID, p.QoS, p.Topic, string(p.Payload))
			}
		case *packets.Pubrel:
			if g.wait() {
				s.pubrel(p.PacketID)
			}
		}
	}
}

func (s *subscriber) decodeV3(r io.Reader, g *gate) error {
	for {
		cp, err := packets3.ReadPacket(r)
		if err != nil {
			return err
		}
		switch p := cp.(type) {
		case *packets3.PublishPacket:
			if g.wait() {
				s.publish(p.MessageID, p.Qos, p.TopicName, string(p.Payload))
			}
		case *packets3.PubrelPacket:
			if g.wait() {
				s.pubrel(p.MessageID)
			}
		}
	}
}

// proxy sits between a subscriber's client and the broker and hands a copy
// of what the broker sends to a decoder. It is a TCP proxy rather than a
// wrapped net.Conn because the client libraries write a packet in several
// pieces, relying on the writev of a *net.TCPConn to keep it whole against a
// concurrent PINGREQ or acknowledgement.
type proxy struct {
	ln   net.Listener
	up   net.Conn // to the broker
	done chan struct{}
}

func startProxy(ctx context.Context, addr string, decode func(io.Reader) error) (*proxy, error) {
	up, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = up.Close()
		return nil, err
	}
	p := &proxy{ln: ln, up: up, done: make(chan struct{})}
	go p.run(decode)
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) run(decode func(io.Reader) error) {
	defer close(p.done)
	down, err := p.ln.Accept()
	_ = p.ln.Close()
	if err != nil {
		_ = p.up.Close()
		return
	}
	r, w := io.Pipe()
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.CloseWithError(decode(r)) }) // a decoder that stops must not block the copy
	wg.Go(func() {
		_, _ = io.Copy(p.up, down)
		_ = p.up.Close()
		_ = down.Close()
	})
	_, err = io.Copy(teeWriter{down, w}, p.up)
	_ = w.CloseWithError(cmp.Or(err, io.EOF))
	_ = down.Close()
	_ = p.up.Close()
	wg.Wait()
}

// close waits for the client's side to end, then ends the broker's.
func (p *proxy) close() {
	_ = p.ln.Close() // if the client never came
	select {
	case <-p.done:
		return
	case <-time.After(clientTimeout):
	}
	_ = p.up.Close()
	<-p.done
}

// teeWriter writes to the client, then records what it wrote.
type teeWriter struct {
	client io.Writer
	record *io.PipeWriter
}

func (t teeWriter) Write(b []byte) (int, error) {
	n, err := t.client.Write(b)
	_, _ = t.record.Write(b[:n])
	return n, err
}

// publisher sends messages with a clean session.
type publisher struct {
	c5 *paho.Client
	c3 pahov3.Client
}

func dialPublisher(ctx context.Context, addr, id string, v3 bool) (*publisher, error) {
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	if v3 {
		o := pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(true).
			SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).SetConnectTimeout(clientTimeout)
		c := pahov3.NewClient(o)
		if err := wait(c.Connect()); err != nil {
			return nil, fmt.Errorf("%s: connect: %w", id, err)
		}
		return &publisher{c3: c}, nil
	}
	nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := paho.NewClient(paho.ClientConfig{Conn: nc, OnClientError: func(error) {}, OnServerDisconnect: func(*paho.Disconnect) {}})
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 60}); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("%s: connect: %w", id, err)
	}
	return &publisher{c5: c}, nil
}

// publish returns nil once the broker acknowledged the message: PUBACK for
// QoS 1, PUBCOMP for QoS 2, with a success code.
func (p *publisher) publish(ctx context.Context, topic string, qos byte, payload string) error {
	if p.c3 != nil {
		tok := p.c3.Publish(topic, qos, false, payload)
		select {
		case <-tok.Done():
			return tok.Error()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	r, err := p.c5.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: []byte(payload)})
	switch {
	case err != nil:
		return err
	case r == nil || r.ReasonCode >= 0x80:
		return errors.New("refused")
	}
	return nil
}

func (p *publisher) close() {
	if p.c3 != nil {
		p.c3.Disconnect(0)
		return
	}
	_ = p.c5.Disconnect(&paho.Disconnect{})
	select {
	case <-p.c5.Done():
	case <-time.After(clientTimeout):
	}
}

func wait(tok pahov3.Token) error {
	if !tok.WaitTimeout(clientTimeout) {
		return errors.New("timed out")
	}
	return tok.Error()
}
