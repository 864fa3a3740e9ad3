package main

import (
	"encoding/hex"
	"errors"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
)

// The golden encodings between nodes: nodes of different builds of this
// release must read each other's, so they change only with a new kind (a
// node refuses a kind it does not know).
const (
	// goldenRouteMessage is the message of goldenRoute: every optional
	// field set, an empty but set Correlation Data, the largest expiry.
	goldenRouteMessage = "03612f62" + "0e" + "01" + "ffffffff0f" + "026374" + "027274" + "01" +
		"02" + "016b" + "0176" + "00" + "00" + "6869"
	goldenRoute = "01" + "06" + "ffffffffffffffffff01" + "b960" + "026d70" + "0163" +
		"01" + "0c" + "2473686172652f672f612f2b" /* $share/g/a/+ */ + "ffff03" + "ffffffffffffffffff01" + goldenRouteMessage
	// plainRoute has nothing set.
	plainRoute = "01" + "06" + "00" + "00" + "00" + "00" + "00" + "00" + "00" +
		"0174" + "00" + "00" + "00" + "00" + "00" + "00"
)

func goldenRouteMsg() *routeMsg {
	return &routeMsg{boot: math.MaxUint64, seq: 12345, from: mqtthooks.SubscriberID{Mountpoint: "mp", ClientID: "c"},
		shares: []string{"$share/g/a/+"}, ref: resendRef{pid: math.MaxUint16, nonce: math.MaxUint64},
		msg: &mqtthooks.Message{Topic: "a/b", Payload: []byte("hi"), QoS: 2, Retain: true,
			Properties: mqtthooks.PublishProperties{PayloadFormatIndicator: 1,
				MessageExpiryInterval: mqtthooks.Some(uint32(math.MaxUint32)), ContentType: "ct", ResponseTopic: "rt",
				CorrelationData: []byte{}, UserProperties: []mqtthooks.UserProperty{{Key: "k", Value: "v"}, {}}}}}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

func TestClusterCodecGolden(t *testing.T) {
	in := goldenRouteMsg()
	arrived := encoder{} // clustermove.go's arrived
	arrived.str("mp")
	arrived.str("c")
	arrived.str("a/+")
	for _, c := range []struct {
		name string
		got  []byte
		want string
	}{
		{"route", encodeRoute(in), goldenRoute},
		{"plain route", encodeRoute(&routeMsg{msg: &mqtthooks.Message{Topic: "t"}}), plainRoute},
		{"route, QoS 1, expiry 0", encodeRoute(&routeMsg{seq: 1, ref: resendRef{pid: 1},
			msg: &mqtthooks.Message{Topic: "t", QoS: 1, Properties: mqtthooks.PublishProperties{
				MessageExpiryInterval: mqtthooks.Some(uint32(0)), CorrelationData: []byte{0},
				UserProperties: []mqtthooks.UserProperty{}}}}),
			"01" + "06" + "00" + "01" + "00" + "00" + "00" + "01" + "00" + "0174" + "09" + "00" + "00" + "00" + "00" + "0200" + "00"},
		{"reply", encodeReply(nil), "010200"},
		{"failed reply", encodeReply(errors.New("disk full")), "010201" + "09" + "6469736b2066756c6c"},
		{"interest", encodeInterest("mp", "$share/g/#"), "0103" + "026d70" + "0a" + "2473686172652f672f23"},
		{"retained", encodeRetained("mp", in.msg), "0104" + "026d70" + goldenRouteMessage},
		{"arrived", arrived.b, "026d70" + "0163" + "03612f2b"},
	} {
		assert.Equal(t, c.want, hex.EncodeToString(c.got), c.name)
	}

	out, err := decodeRoute(unhex(t, goldenRoute))
	require.NoError(t, err)
	assert.Equal(t, in, out)
	assert.NotNil(t, out.msg.Properties.CorrelationData, "an empty Correlation Data stays set")
	out, err = decodeRoute(unhex(t, plainRoute))
	require.NoError(t, err)
	assert.Equal(t, &routeMsg{msg: &mqtthooks.Message{Topic: "t", Payload: []byte{}}}, out)
	assert.NoError(t, decodeReply(unhex(t, "010200")))
	assert.EqualError(t, decodeReply(unhex(t, "010201"+"09"+"6469736b2066756c6c")),
		"cluster: the node did not store the message: disk full")
	mp, filter, err := decodeInterest(unhex(t, "0103"+"026d70"+"0a"+"2473686172652f672f23"))
	require.NoError(t, err)
	assert.Equal(t, []string{"mp", "$share/g/#"}, []string{mp, filter})
	mp, m, err := decodeRetained(unhex(t, "0104"+"026d70"+goldenRouteMessage))
	require.NoError(t, err)
	assert.Equal(t, "mp", mp)
	assert.Equal(t, in.msg, m)

	d := decoder{b: unhex(t, "026d70"+"0163"+"03612f2b")} // clustermove.go's serveArrived
	assert.Equal(t, []string{"mp", "c", "a/+"}, []string{d.str(), d.str(), d.str()})
	assert.NoError(t, d.err)
}

// What is cut short or malformed fails with errWire, and nothing panics.
func TestClusterCodecMalformed(t *testing.T) {
	decoders := map[string]func([]byte) error{
		"route": func(b []byte) error { _, err := decodeRoute(b); return err },
		"reply": decodeReply,
		"interest": func(b []byte) error {
			_, _, err := decodeInterest(b)
			return err
		},
		"retained": func(b []byte) error { _, _, err := decodeRetained(b); return err },
		"arrived": func(b []byte) error {
			d := decoder{b: b}
			d.str()
			d.str()
			d.str()
			return d.err
		},
	}
	for _, golden := range []string{goldenRoute, plainRoute, "0104" + "026d70" + goldenRouteMessage,
		"0103" + "026d70" + "0a" + "2473686172652f672f23", "010201" + "09" + "6469736b2066756c6c"} {
		b := unhex(t, golden)
		for name, decode := range decoders {
			for i := range len(b) + 1 {
				err := decode(b[:i])
				if err != nil && !errors.Is(err, errWire) {
					assert.Equal(t, "reply", name, "%s of %x: %v", name, b[:i], err) // a reply's reason may be cut short
				}
			}
		}
	}
	for _, c := range []struct {
		name string
		hex  string
	}{
		{"empty", ""},
		{"another version", "02" + goldenRoute[2:]},
		{"another kind", "01" + "01" + goldenRoute[4:]},
		{"cut in the header", goldenRoute[:len(goldenRoute)-len(goldenRouteMessage)-2]},
		{"QoS 3", "0105" + "000000000000" + "0174" + "03" + "0000000000"},
		{"more shares than bytes", "0105" + "0000" + "0000" + "ffffffff0f"},
		{"more user properties than bytes", "0105" + "000000000000" + "0174" + "00" + "00000000" + "05" + "0000"},
	} {
		_, err := decodeRoute(unhex(t, c.hex))
		assert.ErrorIs(t, err, errWire, c.name)
	}
	assert.ErrorIs(t, decodeReply(nil), errWire)
	_, _, err := decodeInterest(unhex(t, "0103"+"026d70"+"0a"))
	assert.ErrorIs(t, err, errWire)
	_, _, err = decodeRetained(unhex(t, "0104"+"026d70"+"03612f62"))
	assert.ErrorIs(t, err, errWire)
}
