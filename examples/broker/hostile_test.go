package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks/adapters/mochi"
)

// closedWithin reports whether the server closed nc, without sending
// anything, within 5 s.
func closedWithin(t *testing.T, nc net.Conn) {
	t.Helper()
	require.NoError(t, nc.SetReadDeadline(time.Now().Add(5*time.Second)))
	n, err := nc.Read(make([]byte, 16))
	assert.Zero(t, n, "the server sent something")
	assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err), "want a close, got %v", err)
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

func encodeT(t *testing.T, pk packets.Packet) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	}
	require.NoError(t, err)
	return buf.Bytes()
}

func connectBytes(t *testing.T, version byte, id string) []byte {
	return encodeT(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 30}})
}

// Hostile input closes that connection as MQTT asks, and never the broker:
// other clients keep working.
func TestHostileInput(t *testing.T) {
	b := startBroker(t, flags{maxPacketSize: 1024})
	dial := func() net.Conn {
		nc, err := net.Dial("tcp", b.addr)
		require.NoError(t, err)
		t.Cleanup(func() { _ = nc.Close() })
		return nc
	}

	t.Run("truncated CONNECT", func(t *testing.T) {
		nc := dial()
		full := connectBytes(t, 4, "trunc")
		_, _ = nc.Write(full[:len(full)-3])
		_ = nc.(*net.TCPConn).CloseWrite()
		closedWithin(t, nc)
	})
	t.Run("remaining length over the limit", func(t *testing.T) {
		nc := dial()
		_, _ = nc.Write([]byte{0x10, 0x80, 0x80, 0x40}) // CONNECT of 1 MiB: refused before its body
		closedWithin(t, nc)
	})
	t.Run("garbage", func(t *testing.T) {
		nc := dial()
		_, _ = nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		closedWithin(t, nc)
	})
	t.Run("a packet before CONNECT", func(t *testing.T) {
		nc := dial()
		_, _ = nc.Write(encodeT(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}))
		closedWithin(t, nc)
	})
	t.Run("unknown protocol level", func(t *testing.T) {
		nc := dial()
		bad := connectBytes(t, 4, "lvl")
		bad[8] = 9 // the protocol level byte, after the fixed header and "MQTT"
		_, _ = nc.Write(bad)
		ack := readRaw(t, nc, 4)
		assert.Equal(t, packets.Connack, ack.FixedHeader.Type)
		assert.Equal(t, byte(1), ack.ReasonCode)
	})
	t.Run("second CONNECT", func(t *testing.T) {
		nc := rawConnect(t, b.addr, 5, "twice", nil)
		_, _ = nc.Write(connectBytes(t, 5, "twice"))
		pk := readRaw(t, nc, 5)
		assert.Equal(t, packets.Disconnect, pk.FixedHeader.Type)
		assert.Equal(t, byte(0x82), pk.ReasonCode)
	})
	t.Run("invalid UTF-8 in a topic", func(t *testing.T) {
		nc := rawConnect(t, b.addr, 5, "utf8", nil)
		raw := encodeT(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 5,
			TopicName: "ab", Payload: []byte("x")})
		i := bytes.Index(raw, []byte("ab"))
		raw[i+1] = 0xFF
		_, _ = nc.Write(raw)
		pk := readRaw(t, nc, 5)
		assert.Equal(t, packets.Disconnect, pk.FixedHeader.Type)
		assert.Contains(t, []byte{0x81, 0x90}, pk.ReasonCode)
	})
	t.Run("PUBLISH too large", func(t *testing.T) {
		nc := rawConnect(t, b.addr, 5, "big", nil)
		_, _ = nc.Write([]byte{0x30, 0x80, 0x80, 0x40}) // a 1 MiB PUBLISH: refused on its header, body never sent
		pk := readRaw(t, nc, 5)
		assert.Equal(t, packets.Disconnect, pk.FixedHeader.Type)
		assert.Equal(t, byte(0x95), pk.ReasonCode)
	})
	t.Run("wildcard in a topic name", func(t *testing.T) {
		nc := rawConnect(t, b.addr, 5, "wild", nil)
		_, _ = nc.Write(encodeT(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 5,
			TopicName: "a/+", Payload: []byte("x")}))
		pk := readRaw(t, nc, 5)
		assert.Equal(t, byte(0x90), pk.ReasonCode)
	})

	// After all that, the broker still serves.
	c, err := v5Client(t, b.addr, &paho.Connect{ClientID: "fine", CleanStart: true}, nil)
	require.NoError(t, err)
	assert.Equal(t, byte(0), c.connack.ReasonCode)
}

// FuzzReadPacket feeds the packet-reading path anything: it returns a packet
// or an error, and never panics. It decodes without the recover a live
// connection has (decodeRecovering), so that a panic of the codec or of the
// checks after it fails the fuzzer instead of passing as "malformed".
func FuzzReadPacket(f *testing.F) {
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "c", Clean: true}}
	_ = pk.ConnectEncode(&buf)
	f.Add(buf.Bytes(), byte(0))
	buf.Reset()
	pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 5,
		TopicName: "a/b", Payload: []byte("x"), PacketID: 7}
	_ = pub.PublishEncode(&buf)
	f.Add(buf.Bytes(), byte(5))
	f.Add([]byte{0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 'a'}, byte(4)) // SUBSCRIBE without options
	f.Add([]byte{0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F}, byte(0))      // a length that never ends
	f.Fuzz(func(t *testing.T, data []byte, version byte) {
		var pk packets.Packet
		body, err := readFrame(&frameReader{br: bufio.NewReader(bytes.NewReader(data))}, version%6, 1<<16, &pk)
		if err != nil {
			return
		}
		if precheck(&pk, body) != nil {
			return
		}
		if err := decodeBody(&pk, body); err != nil {
			return
		}
		if pk.FixedHeader.Type == packets.Connect {
			_ = mochi.ConnectRequest(&pk)
		}
	})
}
