package main

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// propertyBomb is an MQTT 5 CONNECT of about size bytes whose properties
// are all empty User Properties: five bytes each, which the codec would turn
// into a pair of strings apiece.
func propertyBomb(size int) []byte {
	n := size / 5
	props := make([]byte, 0, n*5)
	for range n {
		props = append(props, 0x26, 0, 0, 0, 0)
	}
	return frame(0x10, strb("MQTT"), []byte{5, 0x02, 0, 30}, varintBytes(len(props)), props, strb("bomb"))
}

// What an unauthenticated client can cost is bounded: a CONNECT above
// -max-connect-size is refused from its fixed header, one of many
// properties before it is decoded, and at most -max-connecting
// connections are between accept and CONNACK at once.
func TestPreAuthBounds(t *testing.T) {
	b := startBroker(t, flags{maxConnectSize: 64 << 10, maxConnecting: 2})

	big, many := propertyBomb(1<<20), propertyBomb(60<<10)
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	const bombs = 20
	for range bombs {
		nc, err := net.Dial("tcp", b.addr)
		require.NoError(t, err)
		_, _ = nc.Write(big) // 1 MiB: refused before its body is read, so the write may fail
		closedWithin(t, nc)
		_ = nc.Close()
		assert.Equal(t, byte(0x83), connackCode(t, b.addr, many), "too many properties")
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	perConnect := (after.TotalAlloc - before.TotalAlloc) / (2 * bombs)
	t.Logf("allocated per refused CONNECT: %d bytes", perConnect)
	assert.Less(t, perConnect, uint64(256<<10), "bytes allocated per refused CONNECT (decoding a 1 MiB bomb took ~39 MB)")

	// Two silent connections take both slots; a third client waits for one.
	idle1, err := net.Dial("tcp", b.addr)
	require.NoError(t, err)
	defer idle1.Close()
	idle2, err := net.Dial("tcp", b.addr)
	require.NoError(t, err)
	defer idle2.Close()
	require.Eventually(t, func() bool { return len(b.srv.connecting) == 2 }, 5*time.Second, time.Millisecond)
	third, err := net.Dial("tcp", b.addr)
	require.NoError(t, err)
	defer third.Close()
	_, err = third.Write(connect5(0x02, props()))
	require.NoError(t, err)
	require.NoError(t, idle1.Close()) // a slot frees: the third goes on
	ack := readRaw(t, third, 5)
	require.Equal(t, packets.Connack, ack.FixedHeader.Type)
	assert.Equal(t, byte(0), ack.ReasonCode)
	require.Eventually(t, func() bool { return len(b.srv.connecting) == 1 }, 5*time.Second, time.Millisecond,
		"the third's slot came back at its CONNACK; idle2 still holds one")
}
