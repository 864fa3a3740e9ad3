package pebble

import (
	"encoding/hex"
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
)

// The values the golden encodings below stand for: every optional field set
// and unset, an empty but set Correlation Data, and the largest varints.
var (
	goldenID = mqtthooks.SubscriberID{Mountpoint: "mp", ClientID: "c1"}

	goldenMessage = &mqtthooks.Message{Topic: "a/b", Payload: []byte("hi"), QoS: 2, Retain: true,
		Properties: mqtthooks.PublishProperties{PayloadFormatIndicator: 1,
			MessageExpiryInterval: mqtthooks.Some(uint32(math.MaxUint32)), ContentType: "ct", ResponseTopic: "rt",
			CorrelationData: []byte{}, UserProperties: []mqtthooks.UserProperty{{Key: "k", Value: "v"}, {}}}}
	// plainMessage has nothing set: nil Payload, Correlation Data and User
	// Properties, no Message Expiry Interval.
	plainMessage = &mqtthooks.Message{Topic: "t"}
	// zeroMessage has its optional fields set to their zero values.
	zeroMessage = &mqtthooks.Message{Topic: "t", Payload: []byte{},
		Properties: mqtthooks.PublishProperties{MessageExpiryInterval: mqtthooks.Some(uint32(0)),
			CorrelationData: []byte{0}, UserProperties: []mqtthooks.UserProperty{}}}

	goldenTime = time.Unix(0, 1_700_000_000_123_456_789)

	goldenRecord = mqtthooks.SessionRecord{ID: goldenID, Generation: math.MaxUint64, Username: "u", HasUsername: true,
		ConnID: 7, Peer: netip.MustParseAddrPort("[::1]:1883"), ProtocolVersion: mqtthooks.MQTT5, Connected: true,
		Expiry: math.MaxInt64, ExpiresAt: goldenTime,
		Wills: []mqtthooks.DelayedWill{{Will: &mqtthooks.Will{Message: *goldenMessage, DelayInterval: 30},
			At: time.Unix(0, -1)}},
		Queue: mqtthooks.QueueSettings{MaxOnlineMessages: -1, MaxOfflineMessages: math.MinInt64,
			QueueType: 1, DeliverMode: 1, StoreQoS0Offline: true, MaxInflight: 65535},
		ConnectionWills: []*mqtthooks.Will{{Message: *plainMessage}},
		Cleanup:         true}

	goldenEntry = mqtthooks.StoredEntry{Seq: 9, MessageID: math.MaxUint64, QoS: 1, Retain: true,
		SubscriptionIdentifiers: []uint32{1, math.MaxUint32}, ExpiresAt: goldenTime,
		State: mqtthooks.EntryPubrelOwed, Sent: 3}

	goldenSub = mqtthooks.Subscription{Filter: "a/+", QoS: 2, NoLocal: true, RetainAsPublished: true,
		RetainHandling: 2, Identifier: math.MaxUint32}
)

// The golden encodings: what this store wrote before, which it must read
// back, and keep writing the same.
const (
	goldenMessageHex = "01" + "03612f62" + "036869" + "02" + "01" + "01" + "01" + "ffffffff0f" + "026374" + "027274" +
		"01" + "03" + "016b" + "0176" + "00" + "00"
	plainMessageHex = "01" + "0174" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00"
	zeroMessageHex  = "01" + "0174" + "01" + "00" + "00" + "00" + "01" + "00" + "00" + "00" + "0200" + "01"
	// goldenRecordHex is goldenRecord; its first fields stand alone in
	// oldRecordHex.
	goldenRecordHex = "01" + "ffffffffffffffffff01" + "0175" + "01" + "07" + "0a5b3a3a315d3a31383833" + "05" + "01" +
		"feffffffffffffffff01" + "aab4aed8c7bfce972f" +
		"01" + goldenMessageBody + "1e" + "01" +
		"01" + "ffffffffffffffffff01" + "01" + "01" + "01" + "feff07" +
		"01" + plainMessageBody + "00" +
		"01"
	goldenMessageBody = "03612f62" + "036869" + "02" + "01" + "01" + "01" + "ffffffff0f" + "026374" + "027274" +
		"01" + "03" + "016b" + "0176" + "00" + "00"
	plainMessageBody = "0174" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00"
	goldenEntryHex   = "01" + "ffffffffffffffffff01" + "01" + "01" + "02" + "01" + "ffffffff0f" + "aab4aed8c7bfce972f" +
		"02" + "03"
	goldenSubHex = "01" + "02" + "01" + "01" + "02" + "ffffffff0f"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

func TestCodecGoldenEncode(t *testing.T) {
	for _, c := range []struct {
		name string
		got  []byte
		want string
	}{
		{"message", encodeMessage(goldenMessage), goldenMessageHex},
		{"plain message", encodeMessage(plainMessage), plainMessageHex},
		{"zero message", encodeMessage(zeroMessage), zeroMessageHex},
		{"record", encodeRecord(&goldenRecord), goldenRecordHex},
		{"empty record", encodeRecord(&mqtthooks.SessionRecord{}),
			"01" + strings.Repeat("00", 18)},
		{"entry", encodeEntry(&goldenEntry), goldenEntryHex},
		{"empty entry", encodeEntry(&mqtthooks.StoredEntry{}), "01" + strings.Repeat("00", 7)},
		{"sub", encodeSub(goldenSub), goldenSubHex},
		{"record key", sessionKey(kindRecord, goldenID), "73" + "026d70" + "026331"},
		{"sub key", subKey(goldenID, "a/+"), "75" + "026d70" + "026331" + "612f2b"},
		{"entry key", entryKey(goldenID, math.MaxUint64), "65" + "026d70" + "026331" + "ffffffffffffffff"},
		{"inbound key", inboundKey(goldenID, 0x0102), "69" + "026d70" + "026331" + "0102"},
		{"message key", msgKey(0x0102030405060708), "6d" + "0102030405060708"},
		{"empty id key", sessionKey(kindRecord, mqtthooks.SubscriberID{}), "73" + "00" + "00"},
	} {
		assert.Equal(t, c.want, hex.EncodeToString(c.got), c.name)
	}
}

func TestCodecGoldenDecode(t *testing.T) {
	for _, want := range []*mqtthooks.Message{goldenMessage, plainMessage, zeroMessage} {
		m, err := decodeMessage(encodeMessage(want))
		require.NoError(t, err)
		assert.Equal(t, want, m)
	}
	m, err := decodeMessage(unhex(t, goldenMessageHex))
	require.NoError(t, err)
	assert.Equal(t, goldenMessage, m)
	assert.NotNil(t, m.Properties.CorrelationData, "an empty Correlation Data stays set")
	m, err = decodeMessage(unhex(t, plainMessageHex))
	require.NoError(t, err)
	assert.Equal(t, plainMessage, m)

	r, err := decodeRecord(goldenID, unhex(t, goldenRecordHex))
	require.NoError(t, err)
	assert.Equal(t, goldenRecord, r)

	// Records written before Cleanup, and before connection Wills, were kept.
	old := goldenRecord
	old.Cleanup = false
	r, err = decodeRecord(goldenID, unhex(t, goldenRecordHex[:len(goldenRecordHex)-2]))
	require.NoError(t, err)
	assert.Equal(t, old, r)
	old.ConnectionWills = nil
	r, err = decodeRecord(goldenID, unhex(t, goldenRecordHex[:len(goldenRecordHex)-2-2-len(plainMessageBody)-2]))
	require.NoError(t, err)
	assert.Equal(t, old, r)

	en, err := decodeEntry(goldenEntry.Seq, unhex(t, goldenEntryHex))
	require.NoError(t, err)
	assert.Equal(t, goldenEntry, en)
	msgID, err := entryMessageID(unhex(t, goldenEntryHex))
	require.NoError(t, err)
	assert.Equal(t, goldenEntry.MessageID, msgID)

	s, err := decodeSub(goldenSub.Filter, unhex(t, goldenSubHex))
	require.NoError(t, err)
	assert.Equal(t, goldenSub, s)

	id, rest, err := parseID(entryKey(goldenID, 5))
	require.NoError(t, err)
	assert.Equal(t, goldenID, id)
	assert.Equal(t, "0000000000000005", hex.EncodeToString(rest))

	// The store reads a record's generation alone (storedGen).
	d := decoder{b: unhex(t, goldenRecordHex)}
	d.version()
	assert.Equal(t, goldenRecord.Generation, d.u())
	assert.NoError(t, d.err)
}

// Damaged values fail with errCorrupt, and a value of another version with
// an error of its own; none panics.
func TestCodecCorrupt(t *testing.T) {
	decoders := map[string]func([]byte) error{
		"message": func(b []byte) error { _, err := decodeMessage(b); return err },
		"record":  func(b []byte) error { _, err := decodeRecord(goldenID, b); return err },
		"entry":   func(b []byte) error { _, err := decodeEntry(1, b); return err },
		"sub":     func(b []byte) error { _, err := decodeSub("f", b); return err },
		"entry message id": func(b []byte) error {
			_, err := entryMessageID(b)
			return err
		},
		"id": func(b []byte) error { _, _, err := parseID(append([]byte{kindRecord}, b...)); return err },
		"generation": func(b []byte) error {
			d := decoder{b: b}
			d.version()
			d.u()
			return d.err
		},
	}
	for _, golden := range []string{goldenMessageHex, plainMessageHex, zeroMessageHex, goldenRecordHex, goldenEntryHex,
		goldenSubHex} {
		b := unhex(t, golden)
		for name, decode := range decoders {
			for i := range len(b) + 1 {
				if err := decode(b[:i]); err != nil && !errors.Is(err, errCorrupt) {
					assert.ErrorContains(t, err, "unknown encoding", "%s of %x", name, b[:i])
				}
			}
			if err := decode(append(b[:len(b):len(b)], 0)); err != nil && !errors.Is(err, errCorrupt) {
				assert.ErrorContains(t, err, "unknown encoding", "%s of %x and a byte", name, b)
			}
		}
	}
	_, err := decodeMessage(unhex(t, goldenMessageHex+"00"))
	assert.ErrorIs(t, err, errCorrupt, "a byte left over")
	_, err = decodeMessage(unhex(t, "02"+goldenMessageHex[2:]))
	assert.ErrorContains(t, err, "pebble store: a value of an unknown encoding")
	_, err = decodeRecord(goldenID, unhex(t, "02"+goldenRecordHex[2:]))
	assert.ErrorContains(t, err, "pebble store: a value of an unknown encoding")
	_, err = decodeMessage(unhex(t, goldenMessageHex[:len(goldenMessageHex)-2]))
	assert.ErrorIs(t, err, errCorrupt, "cut short")
	_, err = decodeMessage(unhex(t, "01"+"0174"+"00"+"00"+"00"+"00"+"00"+"00"+"00"+"00"+"00"+"ffffffff0f"))
	assert.ErrorIs(t, err, errCorrupt, "more user properties than bytes")
	_, err = decodeRecord(goldenID, unhex(t, "01"+"00"+"00"+"00"+"00"+"03"+"78793a"))
	assert.ErrorIs(t, err, errCorrupt, "a malformed peer")
	_, err = decodeEntry(1, unhex(t, "01"+"00"+"00"+"00"+"ffffffffffffffffff01"))
	assert.ErrorIs(t, err, errCorrupt, "more subscription identifiers than bytes")
}

func BenchmarkCodec(b *testing.B) {
	msg, rec, en := encodeMessage(goldenMessage), encodeRecord(&goldenRecord), encodeEntry(&goldenEntry)
	b.Run("EncodeMessage", func(b *testing.B) {
		for b.Loop() {
			encodeMessage(goldenMessage)
		}
	})
	b.Run("DecodeMessage", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodeMessage(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("EncodeRecord", func(b *testing.B) {
		for b.Loop() {
			encodeRecord(&goldenRecord)
		}
	})
	b.Run("DecodeRecord", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodeRecord(goldenID, rec); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("EncodeEntry", func(b *testing.B) {
		for b.Loop() {
			encodeEntry(&goldenEntry)
		}
	})
	b.Run("DecodeEntry", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodeEntry(goldenEntry.Seq, en); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Keys", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := parseID(entryKey(goldenID, 5)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
