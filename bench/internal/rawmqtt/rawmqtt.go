// Package rawmqtt is a bare MQTT client on the mochi codec for the load
// generators of bench/cmd: it writes and reads single packets and does
// nothing behind the caller's back, so that it costs little next to the
// broker under test.
package rawmqtt

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Conn is one connection.
type Conn struct {
	NC      net.Conn
	r       *bufio.Reader
	Version byte
}

// Dial connects and sends connect as a CONNECT of version (its protocol name
// is filled in), then reads the CONNACK, which must accept.
func Dial(addr string, version byte, connect packets.ConnectParams, props packets.Properties) (*Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := &Conn{NC: nc, r: bufio.NewReader(nc), Version: version}
	connect.ProtocolName = []byte("MQTT")
	if err := c.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: connect,
		Properties: props}); err != nil {
		nc.Close()
		return nil, err
	}
	ack, err := c.Read(5 * time.Second)
	if err == nil && (ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0) {
		err = fmt.Errorf("CONNACK %d", ack.ReasonCode)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// Write encodes pk for the connection's version and sends it.
func (c *Conn) Write(pk *packets.Packet) error {
	var buf bytes.Buffer
	var err error
	pk.ProtocolVersion = c.Version
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		err = fmt.Errorf("rawmqtt: cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}
	_ = c.NC.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = c.NC.Write(buf.Bytes())
	return err
}

// Read reads one packet within timeout (0: no deadline).
func (c *Conn) Read(timeout time.Duration) (packets.Packet, error) {
	var pk packets.Packet
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	_ = c.NC.SetReadDeadline(deadline)
	hb, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = c.Version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	}
	return pk, err
}

// Close sends DISCONNECT when polite, and closes the socket.
func (c *Conn) Close(polite bool) {
	if polite {
		_ = c.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	}
	_ = c.NC.Close()
}
