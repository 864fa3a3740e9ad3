package main

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// frame returns a packet: the fixed header byte, the remaining length, and
// body, the concatenation of parts. The packets below are written byte by
// byte because no encoder writes a packet that breaks the rules.
func frame(header byte, parts ...[]byte) []byte {
	var body []byte
	for _, p := range parts {
		body = append(body, p...)
	}
	return append(append([]byte{header}, varintBytes(len(body))...), body...)
}

// strb is an MQTT UTF-8 string: a two-byte length and the bytes.
func strb(s string) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...) }

// props is a property section with its length (under 128 bytes).
func props(p ...byte) []byte { return append([]byte{byte(len(p))}, p...) }

// connect5 is an MQTT 5 CONNECT with flags, properties and client id "c",
// followed by rest (the Will, user name, password).
func connect5(flags byte, properties []byte, rest ...byte) []byte {
	return frame(0x10, strb("MQTT"), []byte{5, flags, 0, 30}, properties, strb("c"), rest)
}

func connect4(flags byte, rest ...byte) []byte {
	return frame(0x10, strb("MQTT"), []byte{4, flags, 0, 30}, strb("c"), rest)
}

// connackCode sends raw and returns the reason code of the MQTT 5 CONNACK.
func connackCode(t *testing.T, addr string, raw []byte) byte {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	_, err = nc.Write(raw)
	require.NoError(t, err)
	ack := readRaw(t, nc, 5)
	require.Equal(t, packets.Connack, ack.FixedHeader.Type)
	return ack.ReasonCode
}

// sendClosed sends raw on a new connection and checks that the server closes
// it without a reply.
func sendClosed(t *testing.T, addr string, raw []byte) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	_, err = nc.Write(raw)
	require.NoError(t, err)
	closedWithin(t, nc)
}

// Protocol checks the codec does not make: each gets the answer the spec
// asks for, a CONNACK or DISCONNECT with 0x81 / 0x82 in MQTT 5, a close in
// MQTT 3, and the broker serves on.
func TestProtocolChecks(t *testing.T) {
	b := startBroker(t, flags{})
	const clean, will, willQoS1, willRetain, password = 0x02, 0x04, 0x08, 0x20, 0x40

	t.Run("CONNECT", func(t *testing.T) {
		// The control: well-formed packets of the same shapes are accepted.
		assert.Equal(t, byte(0), connackCode(t, b.addr, connect5(clean, props(0x11, 0, 0, 0, 10, 0x26, 0, 1, 'k', 0, 1, 'v',
			0x26, 0, 1, 'k', 0, 1, 'w', 0x21, 0, 5, 0x27, 0, 0, 1, 0))), "user properties may repeat")
		assert.Equal(t, byte(0), connackCode(t, b.addr, connect5(clean|password, props(), strb("pw")...)),
			"MQTT 5 allows a password without a user name")

		// [MQTT-2.2.2-2]: a property twice is a protocol error.
		assert.Equal(t, byte(0x82), connackCode(t, b.addr, connect5(clean, props(0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 20))))
		// Receive Maximum 0 and Maximum Packet Size 0 are protocol errors.
		assert.Equal(t, byte(0x82), connackCode(t, b.addr, connect5(clean, props(0x21, 0, 0))))
		assert.Equal(t, byte(0x82), connackCode(t, b.addr, connect5(clean, props(0x27, 0, 0, 0, 0))))
		// A Will property twice.
		willPart := append(append(props(0x01, 1, 0x01, 1), strb("w")...), strb("x")...)
		assert.Equal(t, byte(0x82), connackCode(t, b.addr, connect5(clean|will, props(), willPart...)))
		// [MQTT-3.1.2-11] [MQTT-3.1.2-13]: Will QoS or Will Retain without a Will.
		assert.Equal(t, byte(0x81), connackCode(t, b.addr, connect5(clean|willQoS1, props())))
		assert.Equal(t, byte(0x81), connackCode(t, b.addr, connect5(clean|willRetain, props())))

		// MQTT 3.1.1: a close, no CONNACK.
		sendClosed(t, b.addr, connect4(clean|willQoS1))
		sendClosed(t, b.addr, connect4(clean|willRetain))
		sendClosed(t, b.addr, connect4(clean|password, strb("pw")...)) // [MQTT-3.1.2-22]
	})

	t.Run("PUBLISH", func(t *testing.T) {
		nc := rawConnect(t, b.addr, 5, "p", nil)
		defer nc.Close()
		_, err := nc.Write(frame(0x30, strb("t"), props(0x03, 0, 1, 'a', 0x03, 0, 1, 'b'), []byte("x")))
		require.NoError(t, err)
		d := readRaw(t, nc, 5)
		require.Equal(t, packets.Disconnect, d.FixedHeader.Type)
		assert.Equal(t, byte(0x82), d.ReasonCode, "Content Type twice")
	})

	t.Run("SUBSCRIBE", func(t *testing.T) {
		nc := rawConnect(t, b.addr, 5, "s5", nil)
		defer nc.Close()
		_, err := nc.Write(frame(0x82, []byte{0, 1}, props(), strb("t"), []byte{0x41})) // bit 6 reserved
		require.NoError(t, err)
		d := readRaw(t, nc, 5)
		require.Equal(t, packets.Disconnect, d.FixedHeader.Type)
		assert.Equal(t, byte(0x81), d.ReasonCode)

		nc = rawConnect(t, b.addr, 5, "s5b", nil)
		defer nc.Close()
		_, err = nc.Write(frame(0x82, []byte{0, 1}, props(), strb("t"), []byte{0x31})) // Retain Handling 3
		require.NoError(t, err)
		d = readRaw(t, nc, 5)
		require.Equal(t, packets.Disconnect, d.FixedHeader.Type)
		assert.Equal(t, byte(0x82), d.ReasonCode)

		nc3 := rawConnect(t, b.addr, 4, "s3", nil)
		defer nc3.Close()
		_, err = nc3.Write(frame(0x82, []byte{0, 1}, strb("t"), []byte{0x05})) // MQTT 3: bits 2-7 reserved
		require.NoError(t, err)
		closedWithin(t, nc3)
	})

	// After all that, the broker still serves.
	assert.Equal(t, byte(0), connackCode(t, b.addr, connect5(clean, props())))
}

// Every MQTT 5 packet with properties is checked: a property twice in a
// DISCONNECT or a PUBACK is a protocol error, and an AUTH before the
// CONNACK may not carry more than 1,024 of them (found by review).
func TestPropertiesOfEveryPacket(t *testing.T) {
	b := startBroker(t, flags{})
	nc := rawConnect(t, b.addr, 5, "d", nil)
	defer nc.Close()
	reason := []byte{0x1F, 0, 1, 'a', 0x1F, 0, 1, 'b'}                 // Reason String twice
	_, err := nc.Write(frame(0x40, []byte{0, 9, 0}, props(reason...))) // PUBACK
	require.NoError(t, err)
	d := readRaw(t, nc, 5)
	require.Equal(t, packets.Disconnect, d.FixedHeader.Type)
	assert.Equal(t, byte(0x82), d.ReasonCode)

	nc2 := rawConnect(t, b.addr, 5, "d2", nil)
	defer nc2.Close()
	_, err = nc2.Write(frame(0xE0, []byte{0}, props(reason...))) // DISCONNECT
	require.NoError(t, err)
	closedOrDisconnect(t, nc2)

	// An AUTH in the middle of an exchange, full of User Properties.
	bomb := make([]byte, 0, 1100*5)
	for range 1100 {
		bomb = append(bomb, 0x26, 0, 0, 0, 0)
	}
	body := append([]byte{0x18}, varintBytes(len(bomb))...)
	body = append(body, bomb...)
	var pk packets.Packet
	pk.FixedHeader.Type = packets.Auth
	pk.ProtocolVersion = 5
	assert.ErrorContains(t, precheck(&pk, body), "more than 1024 properties")
}

// varintBytes is n as an MQTT Variable Byte Integer.
func varintBytes(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

// closedOrDisconnect reads until the server closes nc, accepting a DISCONNECT
// first.
func closedOrDisconnect(t *testing.T, nc net.Conn) {
	t.Helper()
	require.NoError(t, nc.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 64)
	for {
		if _, err := nc.Read(buf); err != nil {
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server kept the connection")
			return
		}
	}
}
