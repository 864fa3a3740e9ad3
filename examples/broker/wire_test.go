package main

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// keepAliveReader moves an expired read deadline to 1.5 Keep Alive after
// the last packet and reads on while the client is within it; once that
// time has passed, the timeout is the reader's error.
func TestKeepAliveReaderMovesDeadline(t *testing.T) {
	server, peer := net.Pipe()
	defer server.Close()
	defer peer.Close()
	c := &client{nc: server, keepAlive: time.Hour, lastPacket: time.Now()}
	c.src.c = c
	require.NoError(t, server.SetReadDeadline(time.Now().Add(-time.Second))) // expired before the read
	go func() { _, _ = peer.Write([]byte{0xC0, 0x00}) }()                    // a PINGREQ
	buf := make([]byte, 2)
	n, err := c.src.Read(buf)
	require.NoError(t, err, "the client is within its keep-alive: the deadline moves")
	assert.Equal(t, []byte{0xC0, 0x00}, buf[:n])

	c.lastPacket = time.Now().Add(-2 * time.Hour) // silent for longer than 1.5 Keep Alive
	require.NoError(t, server.SetReadDeadline(time.Now().Add(-time.Second)))
	_, err = c.src.Read(buf)
	assert.True(t, isTimeout(err), "late: the timeout ends the read, got %v", err)
}

// Acknowledgements are read into the connection's reused buffer, packets
// whose decoded fields outlive the read into buffers of their own.
func TestFrameBodies(t *testing.T) {
	server, peer := net.Pipe()
	defer server.Close()
	defer peer.Close()
	go func() {
		_, _ = peer.Write([]byte{0x40, 0x02, 0x00, 0x01})           // PUBACK 1
		_, _ = peer.Write([]byte{0x40, 0x02, 0x00, 0x02})           // PUBACK 2
		_, _ = peer.Write([]byte{0x30, 0x04, 0x00, 0x01, 't', 'x'}) // PUBLISH t "x"
		_, _ = peer.Write([]byte{0x30, 0x04, 0x00, 0x01, 't', 'y'}) // PUBLISH t "y"
	}()
	f := &frameReader{br: bufio.NewReader(server)}
	read := func(version byte) *packets.Packet {
		var pk packets.Packet
		require.NoError(t, readPacket(f, version, 0, &pk))
		return &pk
	}
	assert.Equal(t, uint16(1), read(4).PacketID)
	assert.Equal(t, uint16(2), read(4).PacketID)
	p1, p2 := read(4), read(4)
	assert.Equal(t, "x", string(p1.Payload), "the first PUBLISH's payload is its own")
	assert.Equal(t, "y", string(p2.Payload))
	assert.Equal(t, "t", p1.TopicName)
}
