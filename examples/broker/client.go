package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/adapters/mochi"
)

// client is one network connection. Its reader goroutine translates packets
// into core calls; its writer goroutine, started at the first notification
// (see wake), pulls deliveries when the core notifies it. It implements
// mqtthooks.Conn.
type client struct {
	srv  *server
	nc   net.Conn
	fr   frameReader // reading goroutine only
	src  keepAliveReader
	info mqtthooks.ConnInfo

	// The keep-alive, reading goroutine only: the read deadline is moved
	// when it expires, not before every packet (see keepAliveReader).
	keepAlive  time.Duration // 1.5 times the session's Keep Alive; 0: none
	lastPacket time.Time     // when the reader last asked for a packet

	connecting bool // holds a slot of srv.connecting; serving goroutine only

	ctx    context.Context // canceled when the connection closes
	cancel context.CancelFunc

	wmu      sync.Mutex // serialises writes
	w        *bufio.Writer
	writeDue time.Time       // under wmu: the write deadline set on nc
	enc      bytes.Buffer    // scratch for encoding, under wmu
	closed   bool            // under wmu: nothing more goes out
	replies  []*pendingReply // under wmu: replies waiting for an earlier one to be durable, in order
	acks     chan struct{}   // an acknowledgement became durable: the writer sends what is ready
	once     sync.Once

	version byte
	session *mqtthooks.Session
	limits  mqtthooks.Limits
	maxSize uint32 // largest packet accepted from the client
	peerMax uint32 // largest packet the client accepts (v5); 0: no limit

	notify     chan struct{}
	writer     atomic.Int32   // writerPending, writerIdle, writerRunning or writerStopped
	wanted     atomic.Bool    // a notification or acknowledgement came: the writer has work
	writerDone sync.WaitGroup // the writer goroutine, from startWriter on

	rateWindow time.Time
	rateCount  uint32

	aliases map[uint16]string // the client's topic aliases (MQTT 5), read loop only

	sharedMu   sync.Mutex
	sharedPids map[uint16]*mqtthooks.Message // shared deliveries sent and not yet acknowledged
}

// sentShared records a shared delivery as sent: QoS 0 is done with, QoS 1
// and 2 wait for the client's PUBACK or PUBREC.
func (c *client) sentShared(d *mqtthooks.Delivery) {
	if d.QoS == 0 {
		c.srv.shared.done(d.Message)
		return
	}
	c.sharedMu.Lock()
	defer c.sharedMu.Unlock()
	if c.sharedPids == nil {
		c.sharedPids = map[uint16]*mqtthooks.Message{}
	}
	c.sharedPids[d.PacketID] = d.Message
}

// ackedShared forgets the shared delivery id, if it was one: the client has it.
func (c *client) ackedShared(id uint16) {
	c.sharedMu.Lock()
	m, ok := c.sharedPids[id]
	delete(c.sharedPids, id)
	c.sharedMu.Unlock()
	if ok {
		c.srv.shared.done(m)
	}
}

// The 4 KiB read and write buffers of the connections: most of what a
// connection allocated (63 % of the bytes of a short one), kept for the next.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}
)

func newClient(srv *server, nc net.Conn, listener string, connID uint64) *client {
	c := &client{srv: srv, nc: nc, w: writers.Get().(*bufio.Writer),
		notify: make(chan struct{}, 1), acks: make(chan struct{}, 1), maxSize: srv.cfg.maxPacketSize}
	c.src.c = c
	c.fr.br = readers.Get().(*bufio.Reader)
	c.fr.br.Reset(&c.src)
	c.w.Reset(nc)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.info = mqtthooks.ConnInfo{Listener: listener, Transport: "tcp", ConnID: connID,
		Local: addrPort(nc.LocalAddr()), Peer: addrPort(nc.RemoteAddr())}
	return c
}

// releaseBuffers gives the read and write buffers back to their pools. It
// is called once serve has returned: the reader is done, the writer
// goroutine has returned or never started (and cannot start any more), and
// the connection is closed, so that nothing writes (every write checks
// c.closed under wmu).
func (c *client) releaseBuffers() {
	c.wmu.Lock()
	w := c.w
	c.w = nil
	c.wmu.Unlock()
	w.Reset(nil)
	writers.Put(w)
	r := c.fr.br
	c.fr.br = nil
	r.Reset(nil)
	readers.Put(r)
}

// keepAliveReader is what the read buffer reads from: the connection, with
// the keep-alive deadline moved only when it expires. Before each packet
// the reader notes the time (lastPacket); when the deadline passes, the
// client is late only if 1.5 Keep Alive have passed since then, else the
// deadline is moved to that point and the read goes on, also in the middle
// of a packet. This costs a SetReadDeadline per Keep Alive period instead of
// one per packet.
type keepAliveReader struct{ c *client }

func (k *keepAliveReader) Read(p []byte) (int, error) {
	c := k.c
	for {
		n, err := c.nc.Read(p)
		if err == nil || c.keepAlive == 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		due := c.lastPacket.Add(c.keepAlive)
		if !time.Now().Before(due) {
			return n, err
		}
		if err := c.nc.SetReadDeadline(due); err != nil {
			return n, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// The writer goroutine's states: it starts when there is something to
// write that the reader does not write itself (deliveries, acknowledgements
// that waited for the store), and a connection that only connects and
// disconnects never has one.
const (
	writerPending int32 = iota // the session is not started: work is noted, not started
	writerIdle                 // no goroutine yet; the first work starts one
	writerRunning              // the goroutine runs until the connection ends
	writerStopped              // the connection has ended: none may start
)

// wake starts the writer goroutine if there is none yet and the session
// has started; the work itself is in c.notify or c.acks.
func (c *client) wake() {
	c.wanted.Store(true)
	if c.writer.Load() == writerIdle && c.writer.CompareAndSwap(writerIdle, writerRunning) {
		go func() {
			defer c.writerDone.Done()
			c.writeLoop()
		}()
	}
}

// startWriter lets wake start the writer, and starts it if work came while
// the session was starting. wake stores wanted before it loads the state,
// and startWriter stores the state before it loads wanted: one of them sees
// the other's store.
func (c *client) startWriter() {
	c.writerDone.Add(1) // done by the writer goroutine, or by stopWriter if none started
	c.writer.Store(writerIdle)
	if c.wanted.Load() {
		c.wake()
	}
}

// stopWriter keeps the writer from starting and waits for it if it runs.
func (c *client) stopWriter() {
	for {
		st := c.writer.Load()
		if st == writerRunning || st == writerStopped {
			break
		}
		if c.writer.CompareAndSwap(st, writerStopped) {
			if st == writerIdle {
				c.writerDone.Done()
			}
			break
		}
	}
	c.writerDone.Wait()
}

// handshake completes TLS, on the connection's own goroutine.
func (c *client) handshake() bool {
	tc, ok := c.nc.(*tls.Conn)
	if !ok {
		return true
	}
	c.info.Transport = "tls"
	if err := tc.HandshakeContext(c.ctx); err != nil {
		c.srv.logger.Debug("TLS handshake failed", "peer", c.info.Peer, "err", err)
		return false
	}
	st := tc.ConnectionState()
	c.info.TLS = &st
	return true
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}

// Notify wakes the writer; it never blocks.
func (c *client) Notify() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
	c.wake()
}

// Disconnect sends the core's DISCONNECT (MQTT 5) and closes the connection.
func (c *client) Disconnect(code mqtthooks.ReasonCode) { c.closeWith(code) }

// closeWith ends the connection once: an MQTT 5 DISCONNECT with code (none
// for 0 or MQTT 3), then the socket closes and nothing more is written.
func (c *client) closeWith(code mqtthooks.ReasonCode) {
	c.once.Do(func() {
		c.wmu.Lock()
		if code != 0 && c.version == 5 {
			c.writeDisconnectLocked(code)
		}
		c.closed = true
		c.wmu.Unlock()
		if tc, ok := c.nc.(*net.TCPConn); ok {
			_ = tc.CloseWrite() // the DISCONNECT goes out before the reset an unread body may cause
		}
		c.cancel()
		_ = c.nc.Close()
	})
}

// writeDisconnectLocked writes an MQTT 5 DISCONNECT with code, waiting at
// most a second. c.wmu is held.
func (c *client) writeDisconnectLocked(code mqtthooks.ReasonCode) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5,
		ReasonCode: byte(code)}
	c.enc.Reset()
	if encodeInto(&c.enc, &pk) == nil {
		c.writeDue = time.Now().Add(time.Second)
		_ = c.nc.SetWriteDeadline(c.writeDue)
		_, _ = c.w.Write(c.enc.Bytes())
		_ = c.w.Flush()
	}
}

func (c *client) close() { c.closeWith(0) }

// closeAfterDisconnect closes after the client's DISCONNECT, the last packet
// it sends [MQTT-3.14.4-1], when nothing is written back: no unread input
// can turn the close into a reset that loses a reply, so the shutdown(2)
// closeWith makes first (16 % of the CPU of a connect cycle) is left out.
func (c *client) closeAfterDisconnect() {
	c.once.Do(func() {
		c.wmu.Lock()
		c.closed = true
		c.wmu.Unlock()
		c.cancel()
		_ = c.nc.Close()
	})
}

// write encodes and sends pk now.
func (c *client) write(pk *packets.Packet) error { return c.send(pk, true) }

// reply buffers pk, an answer to what the reader just read; readLoop flushes
// before it waits for more, so that a burst of PUBLISHes gets its PUBACKs in
// one write. Behind an acknowledgement that waits for the store, it waits too:
// replies go out in the order of what they answer [MQTT-4.6.0-2].
func (c *client) reply(pk *packets.Packet) error {
	c.wmu.Lock()
	if len(c.replies) > 0 {
		r := &pendingReply{pk: *pk}
		r.state.Store(replyReady)
		c.replies = append(c.replies, r)
		c.wmu.Unlock()
		return nil
	}
	c.wmu.Unlock()
	return c.send(pk, false)
}

// pendingReply is a reply waiting its turn.
type pendingReply struct {
	pk       packets.Packet
	state    atomic.Int32
	withdraw atomic.Bool // never to be sent: what it answers was not taken; the connection ends
	skip     atomic.Bool // never to be sent, and nothing is wrong
}

const (
	replyWaiting int32 = iota
	replyReady
	replyFailed
	replySkipped
)

// replyWhenStored queues pk, an acknowledgement, until the Receipt it
// returns reports the writes it acknowledges durable. Reading goes on
// meanwhile, so a window of PUBLISHes shares the store's fsyncs; the
// acknowledgements go out in order.
func (c *client) replyWhenStored(pk *packets.Packet) (*pendingReply, *mqtthooks.Receipt) {
	r := &pendingReply{pk: *pk}
	c.wmu.Lock()
	c.replies = append(c.replies, r)
	c.wmu.Unlock()
	return r, mqtthooks.NewReceipt(func(err error) {
		switch {
		case err != nil || r.withdraw.Load():
			r.state.Store(replyFailed)
		case r.skip.Load():
			r.state.Store(replySkipped)
		default:
			r.state.Store(replyReady)
		}
		select { // the writer sends it: a store's goroutine must not wait for a socket
		case c.acks <- struct{}{}:
		default:
		}
		c.wake()
	})
}

// sendReadyLocked writes the replies at the head of the queue that are
// ready. A reply whose writes failed ends the connection unanswered: the
// client sends the PUBLISH again on its next one. c.wmu is held.
func (c *client) sendReadyLocked() (failed bool) {
	for len(c.replies) > 0 && !c.closed {
		r := c.replies[0]
		switch r.state.Load() {
		case replyWaiting:
			return false
		case replyFailed:
			return true
		}
		c.replies[0] = nil
		c.replies = c.replies[1:]
		if r.state.Load() == replySkipped {
			continue
		}
		c.enc.Reset()
		if err := encodeInto(&c.enc, &r.pk); err != nil {
			return true
		}
		if _, err := c.w.Write(c.enc.Bytes()); err != nil {
			return true
		}
	}
	if len(c.replies) == 0 {
		c.replies = nil
	}
	return false
}

// flushReplies writes the ready replies and flushes.
func (c *client) flushReplies() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	if c.sendReadyLocked() {
		return errReplyFailed
	}
	return c.flushLocked()
}

var errReplyFailed = errors.New("an acknowledgement's writes failed")

// sendReady writes the ready replies and flushes; a failure closes.
func (c *client) sendReady() {
	c.wmu.Lock()
	failed := c.sendReadyLocked()
	err := c.flushLocked()
	c.wmu.Unlock()
	if failed || err != nil {
		c.close()
	}
}

func (c *client) send(pk *packets.Packet, flush bool) error {
	_, err := c.sendLimited(pk, flush, 0)
	return err
}

// sendLimited encodes pk into the client's scratch buffer and writes it,
// unless it is larger than limit (0: no limit); sent reports which.
func (c *client) sendLimited(pk *packets.Packet, flush bool, limit uint32) (sent bool, err error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return false, net.ErrClosed
	}
	c.enc.Reset()
	if err := encodeInto(&c.enc, pk); err != nil {
		return false, err
	}
	if limit > 0 && uint64(c.enc.Len()) > uint64(limit) {
		return false, nil
	}
	if _, err := c.w.Write(c.enc.Bytes()); err != nil {
		return false, err
	}
	if flush {
		return true, c.flushLocked()
	}
	return true, nil
}

// flush sends what is buffered.
func (c *client) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	return c.flushLocked()
}

// writeTimeout bounds a write to a client that does not read.
const writeTimeout = 10 * time.Second

// flushLocked sends what is buffered. A write may wait between half and all
// of writeTimeout for the client: the deadline is moved forward only once
// less than half of it is left, not before every write (a SetWriteDeadline
// and a clock read per flush, per message). c.wmu is held.
func (c *client) flushLocked() error {
	if c.closed {
		return net.ErrClosed
	}
	if c.w.Buffered() == 0 {
		return nil
	}
	if now := time.Now(); c.writeDue.Sub(now) < writeTimeout/2 {
		c.writeDue = now.Add(writeTimeout)
		_ = c.nc.SetWriteDeadline(c.writeDue)
	}
	return c.w.Flush()
}

// encodeInto encodes pk into buf with the codec.
func encodeInto(buf *bytes.Buffer, pk *packets.Packet) error {
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackEncode(buf)
	case packets.Publish:
		err = pk.PublishEncode(buf)
	case packets.Puback:
		err = pk.PubackEncode(buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(buf)
	case packets.Suback:
		err = pk.SubackEncode(buf)
	case packets.Unsuback:
		err = pk.UnsubackEncode(buf)
	case packets.Pingresp:
		err = pk.PingrespEncode(buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(buf)
	case packets.Auth:
		err = pk.AuthEncode(buf)
	}
	return err
}

// serve runs the connection to its end.
func (c *client) serve() {
	defer c.close()
	if !c.handshake() || !c.connect() {
		return
	}
	c.srv.setOnline(c.session.ID(), +1)
	defer c.srv.setOnline(c.session.ID(), -1)
	c.startWriter()
	c.readLoop()
	c.close()
	c.stopWriter()
}

// connect reads the CONNECT, runs the core's handshake and sends the
// CONNACK; ok reports a started session, c.session. Apart from serve, so
// that the packets of the handshake are on a frame of their own, not under
// the whole life of the connection.
func (c *client) connect() (ok bool) {
	// Until the CONNACK a client is unauthenticated: what it may cost is
	// bounded, by a packet size of its own and a number of such connections.
	if !c.srv.enterConnecting() {
		return false
	}
	c.connecting = true
	defer c.leaveConnecting()
	preauth := c.maxSize
	if m := c.srv.cfg.maxConnectSize; m > 0 && (preauth == 0 || m < preauth) {
		preauth = m
	}
	// The connect timeout's deadline, set at accept, stays on the socket: a
	// write gets what is left of it (flushLocked moves it when that is too
	// little), an AUTH exchange sets its own, and readLoop the keep-alive's.
	var pk packets.Packet
	err := readPacket(&c.fr, 0, preauth, &pk)
	var we *wireError
	if errors.As(err, &we) && pk.FixedHeader.Type == packets.Connect && validProtocol(&pk) {
		// A CONNECT that breaks a rule: MQTT 5 gets a CONNACK
		// with the code, MQTT 3 a bare close [MQTT-3.1.4-1].
		c.srv.logger.Debug("CONNECT refused", "peer", c.info.Peer, "err", err)
		c.version = pk.ProtocolVersion
		c.refuse(we.code)
		return false
	}
	if err != nil || pk.FixedHeader.Type != packets.Connect {
		c.srv.logger.Debug("connection closed before CONNECT", "peer", c.info.Peer, "err", err)
		return false // anything but a CONNECT first: a bare close
	}
	c.version = pk.ProtocolVersion
	if !validProtocol(&pk) {
		c.refuseVersion()
		return false
	}
	if pk.ReservedBit != 0 { // [MQTT-3.1.2-3]; the core checks the rest of the CONNECT
		c.refuse(mqtthooks.CodeMalformedPacket)
		return false
	}
	req := mochi.ConnectRequest(&pk)
	c.peerMax = req.Properties.MaximumPacketSize
	h, step := c.srv.core.Connect(c.ctx, &c.info, req, c)
	if step.Kind == mqtthooks.SendAuth {
		if step, ok = c.authExchange(h, step, preauth); !ok {
			return false
		}
	}
	c.leaveConnecting()
	if step.Kind == mqtthooks.CloseConnection {
		return false
	}
	if step.Session == nil { // refused: one line an operator can search for
		code := int(step.Connack.ReasonCode)
		if c.version != 5 {
			code = int(step.Connack.ReturnCode)
		}
		c.srv.logger.Info("CONNECT refused", "client", req.ClientID, "user", req.Username, "peer", c.info.Peer,
			"version", c.version, "code", fmt.Sprintf("0x%02x", code), "plugin", step.Plugin, "err", step.Err)
	}
	connackPacket(&pk, c.version, step.Connack) // pk is done with: req holds its fields, not pk
	if err := c.write(&pk); err != nil || step.Session == nil {
		if step.Session != nil {
			step.Session.Lost(c.ctx, err)
		}
		return false
	}
	c.session = step.Session
	c.limits = c.session.Limits()
	if m := c.limits.MaximumPacketSize; m > 0 && (c.maxSize == 0 || m < c.maxSize) {
		c.maxSize = m
	}
	if err := c.session.Start(); err != nil {
		c.session.Lost(c.ctx, err)
		return false
	}
	return true
}

// authExchange sends the core's AUTH packets and hands it the client's
// answers until the core has a CONNACK or closes; ok false: the connection
// ends now, without a CONNACK.
func (c *client) authExchange(h *mqtthooks.Handshake, step mqtthooks.Step, preauth uint32) (_ mqtthooks.Step, ok bool) {
	var in packets.Packet
	for step.Kind == mqtthooks.SendAuth {
		a := step.Auth
		in = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Auth}, ProtocolVersion: 5,
			ReasonCode: byte(a.ReasonCode), Properties: packets.Properties{AuthenticationMethod: a.Method,
				AuthenticationData: a.Data, ReasonString: a.ReasonString}}
		_ = c.write(&in)
		_ = c.nc.SetReadDeadline(h.Deadline())
		err := readPacket(&c.fr, c.version, preauth, &in)
		switch {
		case isTimeout(err):
			step = h.Timeout()
		case err != nil:
			h.Abort()
			return step, false
		case in.FixedHeader.Type == packets.Auth:
			step = h.Auth(c.ctx, &mqtthooks.AuthPacket{ReasonCode: mqtthooks.ReasonCode(in.ReasonCode),
				Method: in.Properties.AuthenticationMethod, Data: in.Properties.AuthenticationData,
				UserProperties: mochi.UserProperties(in.Properties.User)})
		case in.FixedHeader.Type == packets.Disconnect:
			h.Abort()
			return step, false
		default:
			step = h.Unexpected()
		}
	}
	return step, true
}

// leaveConnecting gives back the slot of connections before their CONNACK,
// if the client holds it.
func (c *client) leaveConnecting() {
	if c.connecting {
		c.connecting = false
		c.srv.leaveConnecting()
	}
}

// validProtocol reports whether a CONNECT names a protocol the codec and the
// core know: "MQIsdp" level 3, or "MQTT" level 4 or 5.
func validProtocol(pk *packets.Packet) bool {
	switch string(pk.Connect.ProtocolName) {
	case "MQIsdp":
		return pk.ProtocolVersion == 3
	case "MQTT":
		return pk.ProtocolVersion == 4 || pk.ProtocolVersion == 5
	}
	return false
}

// refuse answers a malformed CONNECT: MQTT 5 gets a CONNACK with code,
// MQTT 3 a bare close.
//
//go:noinline (its packet would be on the frame of its caller)
func (c *client) refuse(code mqtthooks.ReasonCode) {
	if c.version == 5 {
		_ = c.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ProtocolVersion: 5,
			ReasonCode: byte(code)})
	}
}

// refuseVersion answers a CONNECT of an unknown protocol name or level, in
// the MQTT 3 form, which every client reads.
//
//go:noinline (its packet would be on the frame of its caller)
func (c *client) refuseVersion() {
	_ = c.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ProtocolVersion: 4,
		ReasonCode: byte(mqtthooks.RefusedProtocolVersion)})
}

// writeLoop pulls deliveries from the session whenever the core notifies.
func (c *client) writeLoop() {
	buf := make([]mqtthooks.Delivery, 64)
	var pk packets.Packet
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.acks:
			c.sendReady()
			continue
		case <-c.notify:
		}
		for {
			n, err := c.session.Pull(buf)
			if err != nil {
				var ended *mqtthooks.EndedError
				if errors.As(err, &ended) {
					c.closeWith(ended.Code)
				}
				c.close()
				return
			}
			for i := range buf[:n] {
				d := &buf[i]
				if d.Pubrel {
					pk = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1},
						ProtocolVersion: c.version, PacketID: d.PacketID}
				} else {
					publishPacket(&pk, c.version, d)
				}
				shared := !d.Pubrel && c.srv.shared.has(d.Message)
				if shared { // before it is on the wire: its PUBACK may come at once
					c.sentShared(d)
				}
				sent, err := c.sendLimited(&pk, false, c.peerMax)
				if err != nil {
					c.close()
					return
				}
				if !sent {
					if shared {
						c.ackedShared(d.PacketID) // it will not be acknowledged
					}
					c.tooLarge(d) // MQTT 5 §3.1.2.11.4: discarded as if sent
				} else if !d.Pubrel {
					c.srv.sys.sent.Add(1)
				}
			}
			if c.flush() != nil { // one write for the batch
				c.close()
				return
			}
			if n < len(buf) {
				break
			}
		}
	}
}

// tooLarge discards a delivery too large for the client, which must not
// receive it: the core counts it dropped and fires OnMessageDrop.
func (c *client) tooLarge(d *mqtthooks.Delivery) {
	c.srv.logger.Warn("message larger than the client accepts; discarded", "session", c.session.ID().String(),
		"topic", d.Message.Topic, "limit", c.peerMax)
	if err := c.session.Discard(*d); err != nil {
		c.srv.logger.Debug("discard", "session", c.session.ID().String(), "err", err)
	}
}

// readLoop handles the client's packets until the connection ends.
func (c *client) readLoop() {
	if ka := c.limits.KeepAlive; ka > 0 { // keepAliveReader moves the deadline
		c.keepAlive = time.Duration(ka) * 1500 * time.Millisecond
		c.lastPacket = time.Now()
		_ = c.nc.SetReadDeadline(c.lastPacket.Add(c.keepAlive))
	} else {
		_ = c.nc.SetReadDeadline(time.Time{}) // the connect timeout's ends
		c.enableTCPKeepAlive()
	}
	var pk packets.Packet
	for {
		if c.fr.br.Buffered() == 0 && c.flushReplies() != nil { // replies out before waiting for input
			c.lost(net.ErrClosed)
			return
		}
		if c.keepAlive > 0 {
			c.lastPacket = time.Now()
		}
		if err := readPacket(&c.fr, c.version, c.maxSize, &pk); err != nil {
			c.lost(err)
			return
		}
		if code, ok := c.handle(&pk); !ok {
			if code != 0 {
				c.protocolError(code, fmt.Errorf("packet type %d", pk.FixedHeader.Type))
			}
			return
		}
	}
}

// enableTCPKeepAlive turns on the operating system's TCP keep-alive, with
// Go's default timing, for a session without Keep Alive: nothing else would
// notice a peer that went away without a word. The listener leaves it off
// (see server.listen): the other sessions have MQTT's, and it cost 4
// setsockopt calls per accepted connection.
func (c *client) enableTCPKeepAlive() {
	nc := c.nc
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true})
	}
}

// lost ends the session after a read error: keep-alive, a malformed or too
// large packet, or the network.
func (c *client) lost(err error) {
	var we *wireError
	switch {
	case isTimeout(err):
		c.closeWith(mqtthooks.CodeKeepAliveTimeout)
		c.session.Lost(context.Background(), mqtthooks.ErrKeepAlive)
	case errors.Is(err, errTooLarge):
		c.protocolError(mqtthooks.CodePacketTooLarge, err)
	case errors.Is(err, errMalformed):
		c.protocolError(mqtthooks.CodeMalformedPacket, err)
	case errors.As(err, &we):
		c.protocolError(we.code, err)
	default: // the network, or the client closed: nothing to tell it
		c.closeAfterDisconnect()
		c.session.Lost(context.Background(), err)
	}
}

// protocolError sends an MQTT 5 DISCONNECT with code, closes, and ends the
// session.
func (c *client) protocolError(code mqtthooks.ReasonCode, why error) {
	c.srv.logger.Debug("protocol error", "client", c.session.ID().String(), "code", code.String(), "err", why)
	c.closeWith(code)
	c.session.Lost(context.Background(), &mqtthooks.ProtocolError{Code: code, Msg: "client broke the protocol"})
}

// handle handles one packet. It returns ok false when the connection ends,
// with the code of the DISCONNECT to send first, if any.
func (c *client) handle(pk *packets.Packet) (code mqtthooks.ReasonCode, ok bool) {
	s := c.session
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return c.publish(pk)
	case packets.Puback:
		if s.Puback(pk.PacketID) == nil {
			c.ackedShared(pk.PacketID)
		}
	case packets.Pubrec:
		c.pubrec(pk)
	case packets.Pubcomp:
		_ = s.Pubcomp(pk.PacketID)
	case packets.Pubrel:
		if !c.pubrel(pk) {
			return 0, false // the connection has ended
		}
	case packets.Subscribe:
		return c.subscribe(pk)
	case packets.Unsubscribe:
		c.unsubscribe(pk)
	case packets.Pingreq:
		c.pingresp()
	case packets.Disconnect:
		code := mqtthooks.ReasonCode(pk.ReasonCode)
		if c.version != 5 {
			code = mqtthooks.CodeNormalDisconnection
		}
		var err error
		if c.version == 5 && pk.Properties.SessionExpiryIntervalFlag {
			err = s.DisconnectWithExpiry(context.Background(), code, pk.Properties.SessionExpiryInterval)
		} else {
			err = s.Disconnect(context.Background(), code)
		}
		var pe *mqtthooks.ProtocolError
		if errors.As(err, &pe) {
			c.closeWith(pe.Code)
		}
		c.closeAfterDisconnect()
		return 0, false
	case packets.Auth:
		if !c.reauth(pk) {
			return 0, false
		}
	case packets.Connect:
		return mqtthooks.CodeProtocolError, false // a second CONNECT
	default:
		return mqtthooks.CodeProtocolError, false
	}
	return 0, true
}

// The answers to the less frequent packets are built in functions of their
// own: a packets.Packet is about 800 bytes, and each one on handle's frame
// made every connection's stack larger.

// pubrec handles a PUBREC from the client.
func (c *client) pubrec(pk *packets.Packet) {
	s := c.session
	c.ackedShared(pk.PacketID)                   // the message reached the client: it is not handed on
	if c.version == 5 && pk.ReasonCode >= 0x80 { // the client refused it: the flow ends here
		if s.Pubrec(pk.PacketID, nil) == nil {
			_ = s.Pubcomp(pk.PacketID)
		}
		return
	}
	rel := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1},
		ProtocolVersion: c.version, PacketID: pk.PacketID}
	if !c.srv.stored() {
		err := s.Pubrec(pk.PacketID, nil)
		if err != nil {
			if c.version != 5 {
				return // MQTT 3 has no code for an unknown identifier
			}
			rel.ReasonCode = byte(mqtthooks.CodePacketIdentifierNotFound)
		}
		_ = c.reply(&rel)
		return
	}
	rep, r := c.replyWhenStored(&rel) // the PUBREC must be durable before the PUBREL
	if err := s.Pubrec(pk.PacketID, r); err != nil {
		if c.version == 5 {
			rep.pk.ReasonCode = byte(mqtthooks.CodePacketIdentifierNotFound)
		} else {
			rep.skip.Store(true)
		}
	}
	r.Close()
}

// pubrel handles a PUBREL from the client; false: the connection has ended.
func (c *client) pubrel(pk *packets.Packet) bool {
	s := c.session
	if cl := c.srv.cluster; cl != nil {
		cl.resent.released(s.ID(), pk.PacketID)
	}
	reply := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, ProtocolVersion: c.version,
		PacketID: pk.PacketID}
	if !c.srv.stored() {
		known, err := s.InboundPubrel(pk.PacketID, nil)
		if err != nil {
			return false
		}
		if !known && c.version == 5 {
			reply.ReasonCode = byte(mqtthooks.CodePacketIdentifierNotFound)
		}
		_ = c.reply(&reply)
		return true
	}
	rep, r := c.replyWhenStored(&reply) // the release must be durable before the PUBCOMP
	known, err := s.InboundPubrel(pk.PacketID, r)
	if err == nil && !known && c.version == 5 {
		rep.pk.ReasonCode = byte(mqtthooks.CodePacketIdentifierNotFound) // before Close: the writer reads it after
	}
	r.Close()
	return err == nil
}

// pingresp answers a PINGREQ.
//
//go:noinline (its packet would be on the frame of its caller)
func (c *client) pingresp() {
	_ = c.reply(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}, ProtocolVersion: c.version})
}

// reauth handles an AUTH from the client (MQTT 5 re-authentication); false:
// the connection ends.
func (c *client) reauth(pk *packets.Packet) bool {
	s := c.session
	reply, err := s.Reauth(c.ctx, &mqtthooks.AuthPacket{ReasonCode: mqtthooks.ReasonCode(pk.ReasonCode),
		Method: pk.Properties.AuthenticationMethod, Data: pk.Properties.AuthenticationData,
		UserProperties: mochi.UserProperties(pk.Properties.User)})
	if err != nil {
		var ended *mqtthooks.EndedError
		if errors.As(err, &ended) {
			c.closeWith(ended.Code)
		}
		return false
	}
	_ = c.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Auth}, ProtocolVersion: 5,
		ReasonCode: byte(reply.ReasonCode), Properties: packets.Properties{AuthenticationMethod: reply.Method,
			AuthenticationData: reply.Data}})
	return true
}

// publish routes a PUBLISH from the client after checking it against the
// session's limits.
func (c *client) publish(pk *packets.Packet) (mqtthooks.ReasonCode, bool) {
	l := &c.limits
	if strings.ContainsAny(pk.TopicName, "+#") { // before the codec's check, which says 0x82
		return mqtthooks.CodeTopicNameInvalid, false
	}
	if code := pk.PublishValidate(l.TopicAliasMaximum); code != packets.CodeSuccess {
		return mqtthooks.ReasonCode(code.Code), false
	}
	c.srv.sys.received.Add(1)
	if alias := pk.Properties.TopicAlias; alias > 0 { // MQTT 5 §3.3.2.3.4: the connection's own table
		if pk.TopicName != "" {
			if c.aliases == nil {
				c.aliases = make(map[uint16]string, l.TopicAliasMaximum)
			}
			c.aliases[alias] = pk.TopicName
		} else if pk.TopicName = c.aliases[alias]; pk.TopicName == "" {
			return mqtthooks.CodeProtocolError, false // an alias never set [MQTT-3.3.2-8]
		}
	}
	switch {
	case !validTopic(pk.TopicName):
		return mqtthooks.CodeTopicNameInvalid, false
	case pk.FixedHeader.Qos > l.MaximumQoS:
		return mqtthooks.CodeQoSNotSupported, false
	case pk.FixedHeader.Retain && !l.RetainAvailable:
		return mqtthooks.CodeRetainNotSupported, false
	case !c.withinRate():
		return mqtthooks.CodeMessageRateTooHigh, false
	}
	route, taken, handedOver := true, true, false
	var r *mqtthooks.Receipt // with a store: the acknowledgement waits for the copies to be durable
	var rep *pendingReply
	if qos := pk.FixedHeader.Qos; qos > 0 {
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: c.version,
			PacketID: pk.PacketID}
		if qos == 2 {
			ack.FixedHeader.Type = packets.Pubrec
		}
		if c.srv.stored() {
			rep, r = c.replyWhenStored(&ack)
			defer func() {
				if !taken {
					rep.withdraw.Store(true)
				}
				if !handedOver { // in a cluster, the routing closes it when the other nodes' copies are durable
					r.Close()
				}
			}()
		} else {
			defer c.reply(&ack)
		}
	}
	if pk.FixedHeader.Qos == 2 {
		var err error
		if route, err = c.session.InboundPublish(pk.PacketID, r); err != nil {
			// The connection has ended (taken over, say): no PUBREC for a message
			// it did not route; the client sends it again on its next connection.
			taken = false
			return 0, false
		}
	}
	if route {
		if cl := c.srv.cluster; cl != nil {
			msg := mochi.Message(pk)
			resent := pk.FixedHeader.Dup && r != nil && r.Resent() // of a PUBLISH this node refused
			handedOver = cl.publish(c.session.ID(), msg, cl.resent.admit(c.session.ID(), pk.PacketID, resent, msg), r)
		} else {
			c.srv.route(c.session.ID(), mochi.Message(pk), r)
		}
	}
	return 0, true
}

// withinRate counts a PUBLISH against the session's MaxMessageRate.
func (c *client) withinRate() bool {
	max := c.limits.MaxMessageRate
	if max == 0 {
		return true
	}
	now := time.Now()
	if now.Sub(c.rateWindow) >= time.Second {
		c.rateWindow, c.rateCount = now, 0
	}
	c.rateCount++
	return c.rateCount <= max
}

// subscribe stores the subscriptions, answers SUBACK, and sends the retained
// messages they match.
func (c *client) subscribe(pk *packets.Packet) (mqtthooks.ReasonCode, bool) {
	if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
		return mqtthooks.ReasonCode(code.Code), false
	}
	l := &c.limits
	codes := make([]byte, len(pk.Filters))
	var subs []mqtthooks.Subscription
	for i, f := range pk.Filters {
		wild := strings.ContainsAny(f.Filter, "+#")
		shared := strings.HasPrefix(f.Filter, "$share/")
		switch {
		case shared && f.NoLocal && c.version == 5:
			return mqtthooks.CodeProtocolError, false // [MQTT-3.8.3-4]
		case shared && !l.SharedSubscriptionAvailable:
			codes[i] = byte(mqtthooks.CodeSharedSubscriptionsNotSupported)
		case shared && !validShare(f.Filter), !shared && !validFilter(f.Filter):
			codes[i] = byte(mqtthooks.CodeTopicFilterInvalid)
		case wild && !l.WildcardSubscriptionAvailable:
			codes[i] = byte(mqtthooks.CodeWildcardSubscriptionsNotSupported)
		case f.Identifier != 0 && !l.SubscriptionIdentifierAvailable:
			return mqtthooks.CodeSubscriptionIdentifiersNotSupported, false
		default:
			qos := min(f.Qos, l.MaximumQoS)
			codes[i] = qos
			subs = append(subs, mqtthooks.Subscription{Filter: f.Filter, QoS: qos, NoLocal: f.NoLocal,
				RetainAsPublished: f.RetainAsPublished, RetainHandling: f.RetainHandling, Identifier: uint32(f.Identifier)})
		}
		if c.version != 5 && codes[i] >= 0x80 {
			codes[i] = 0x80
		}
	}
	id := c.session.ID()
	existed := make([]bool, len(subs)) // for Retain Handling 1
	for i, sub := range subs {
		existed[i] = c.srv.router.has(id, sub.Filter)
	}
	if len(subs) > 0 {
		if err := c.session.Subscribe(c.ctx, subs...); err != nil {
			for i := range codes {
				codes[i] = 0x80
			}
			subs = nil
		}
	}
	_ = c.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, ProtocolVersion: c.version,
		PacketID: pk.PacketID, ReasonCodes: codes})
	if cl := c.srv.cluster; cl != nil && slices.ContainsFunc(subs, func(s mqtthooks.Subscription) bool {
		return s.RetainHandling != 2 && !strings.HasPrefix(s.Filter, "$share/")
	}) {
		cl.retainedBarrier(c.ctx) // the retained messages any node acknowledged are here
	}
	for i, sub := range subs {
		if sub.RetainHandling == 2 || sub.RetainHandling == 1 && existed[i] || strings.HasPrefix(sub.Filter, "$share/") {
			continue // a shared subscription gets no retained messages (MQTT 5 §4.8.2)
		}
		for _, msg := range c.srv.router.retainedFor(id.Mountpoint, sub.Filter) {
			var ids []uint32
			if sub.Identifier != 0 {
				ids = []uint32{sub.Identifier}
			}
			_ = c.srv.core.Deliver(id, msg, mqtthooks.DeliverOptions{QoS: min(msg.QoS, sub.QoS), Retain: true,
				SubscriptionIdentifiers: ids, Generation: c.session.Generation()})
		}
	}
	return 0, true
}

// unsubscribe removes subscriptions and answers UNSUBACK.
func (c *client) unsubscribe(pk *packets.Packet) {
	filters := make([]string, len(pk.Filters))
	for i, f := range pk.Filters {
		filters[i] = f.Filter
	}
	existed, _ := c.session.Unsubscribe(c.ctx, filters...)
	codes := make([]byte, len(filters))
	for i := range codes {
		if i < len(existed) && !existed[i] {
			codes[i] = byte(mqtthooks.CodeNoSubscriptionExisted)
		}
	}
	_ = c.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsuback}, ProtocolVersion: c.version,
		PacketID: pk.PacketID, ReasonCodes: codes})
}
