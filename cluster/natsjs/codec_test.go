package natsjs

import (
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
)

// The session the golden log parts below stand for: every optional field of
// a message set and unset, an empty but set Correlation Data, and the
// largest varints.
var (
	goldenMessage = &mqtthooks.Message{Topic: "a/b", Payload: []byte("hi"), QoS: 2, Retain: true,
		Properties: mqtthooks.PublishProperties{PayloadFormatIndicator: 1,
			MessageExpiryInterval: mqtthooks.Some(uint32(math.MaxUint32)), ContentType: "ct", ResponseTopic: "rt",
			CorrelationData: []byte{}, UserProperties: []mqtthooks.UserProperty{{Key: "k", Value: "v"}, {}}}}
	plainMessage = &mqtthooks.Message{Topic: "t"} // nothing set

	goldenTime = time.Unix(0, 1_700_000_000_123_456_789)
	goldenSub  = mqtthooks.Subscription{Filter: "a/+", QoS: 2, NoLocal: true, RetainAsPublished: true,
		RetainHandling: 2, Identifier: math.MaxUint32}
)

func goldenState() *state {
	st := newState(mqtthooks.SessionRecord{ID: mqtthooks.SubscriberID{Mountpoint: "mp", ClientID: "c1"},
		Generation: 3, ProtocolVersion: mqtthooks.MQTT311,
		Wills: []mqtthooks.DelayedWill{{Will: &mqtthooks.Will{Message: *plainMessage, DelayInterval: 5},
			At: goldenTime}},
		ConnectionWills: []*mqtthooks.Will{{Message: *goldenMessage}},
		Cleanup:         true})
	st.subs[goldenSub.Filter] = goldenSub
	st.subs["b"] = mqtthooks.Subscription{Filter: "b"}
	st.inbound[1] = struct{}{}
	st.inbound[math.MaxUint16] = struct{}{}
	st.putEntry(&mqtthooks.StoredEntry{Seq: 1, MessageID: 1, QoS: 1, Retain: true,
		SubscriptionIdentifiers: []uint32{1, math.MaxUint32}, ExpiresAt: goldenTime,
		State: mqtthooks.EntryPubrelOwed, Sent: 3}, goldenMessage, nil)
	st.putEntry(&mqtthooks.StoredEntry{Seq: math.MaxUint64, MessageID: math.MaxUint64}, plainMessage, nil)
	return st
}

// The golden encodings: what the session logs hold, which a Store must read
// back, and keep writing the same.
const (
	goldenMessageBody = "03612f62" + "036869" + "02" + "01" + "01" + "01" + "ffffffff0f" + "026374" + "027274" +
		"01" + "03" + "016b" + "0176" + "00" + "00"
	plainMessageBody = "0174" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00"
	goldenSnapshot   = "01" + "53" + "026d70" + "026331" +
		"48" + "03" + "00" + "00" + "00" + "00" + "04" + "00" + "00" + "00" +
		"01" + plainMessageBody + "05" + "aab4aed8c7bfce972f" +
		"00" + "00" + "00" + "00" + "00" + "00" +
		"01" + goldenMessageBody + "00" +
		"01" +
		"02" + "03612f2b" + "02" + "01" + "01" + "02" + "ffffffff0f" + "0162" + "00" + "00" + "00" + "00" + "00" +
		"02" + "01" + "ffff03" +
		"02" + "01" + goldenMessageBody + "ffffffffffffffffff01" + plainMessageBody +
		"02" + "01" + "01" + "01" + "01" + "02" + "01" + "ffffffff0f" + "aab4aed8c7bfce972f" + "02" + "03" +
		"ffffffffffffffffff01" + "ffffffffffffffffff01" + "00" + "00" + "00" + "00" + "00" + "00"
)

// goldenOps are a delta's operations and their encodings.
func goldenOps() ([]*op, []string) {
	rec := &mqtthooks.SessionRecord{ID: mqtthooks.SubscriberID{Mountpoint: "mp", ClientID: "c1"}, Generation: 4}
	return []*op{
			{kind: opRenew, to: 4},
			{kind: opUpdate, rec: rec},
			{kind: opPutSub, sub: goldenSub},
			{kind: opDelSub, filter: "b"},
			{kind: opPutEntry, entry: mqtthooks.StoredEntry{Seq: 3, MessageID: 7, QoS: 1}, msg: plainMessage},
			{kind: opPutEntry, entry: mqtthooks.StoredEntry{Seq: 4, MessageID: 7}, msg: plainMessage},
			{kind: opDelEntry, seq: 1},
			{kind: opPutIn, pid: 2},
			{kind: opDelIn, pid: 1},
		}, []string{
			"72" + "04",
			"75" + "13" + "04" + strings.Repeat("00", 17),
			"73" + "03612f2b" + "02" + "01" + "01" + "02" + "ffffffff0f",
			"74" + "0162",
			"65" + "03" + "07" + "01" + "00" + "00" + "00" + "00" + "00" + "01" + plainMessageBody,
			"65" + "04" + "07" + "00" + "00" + "00" + "00" + "00" + "00" + "00", // the session has message 7 now
			"66" + "01",
			"69" + "02",
			"6a" + "01",
		}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

func TestCodecGolden(t *testing.T) {
	assert.Equal(t, goldenSnapshot, hex.EncodeToString(encodeSnapshot(goldenState())))
	assert.Equal(t, "0158", hex.EncodeToString(tombstone))

	st, err := decodePart(nil, unhex(t, goldenSnapshot), nil)
	require.NoError(t, err)
	assert.Equal(t, goldenState(), st)
	assert.NotNil(t, st.msgs[1].Properties.CorrelationData, "an empty Correlation Data stays set")

	want := goldenState()
	var e encoder
	ops, encoded := goldenOps()
	for i, o := range ops {
		n := len(e.b)
		applyOp(want, o, &e, nil)
		assert.Equal(t, encoded[i], hex.EncodeToString(e.b[n:]), "op %c", o.kind)
	}
	delta := "01" + "44" + strings.Join(encoded, "")
	assert.Equal(t, delta, hex.EncodeToString(append([]byte{version, kindDelta}, e.b...)))
	st, err = decodePart(st, unhex(t, delta), nil)
	require.NoError(t, err)
	assert.Equal(t, want, st)

	st, err = decodePart(st, tombstone, nil)
	require.NoError(t, err)
	assert.Nil(t, st)
}

// Damaged parts fail with errCorrupt, and a part of another version with an
// error of its own; none panics.
func TestCodecCorrupt(t *testing.T) {
	snapshot := unhex(t, goldenSnapshot)
	_, encoded := goldenOps()
	delta := unhex(t, "0144"+strings.Join(encoded, ""))
	check := func(st *state, b []byte) {
		t.Helper()
		if _, err := decodePart(st, b, nil); err != nil && !errors.Is(err, errCorrupt) {
			assert.ErrorContains(t, err, "unknown encoding", "%x", b)
		}
	}
	for i := range len(snapshot) + 1 {
		check(nil, snapshot[:i])
		check(goldenState(), snapshot[:i])
	}
	for i := range len(delta) + 1 {
		check(goldenState(), delta[:i])
	}

	for _, c := range []struct {
		name string
		st   *state
		b    []byte
	}{
		{"a byte left over", nil, append(snapshot[:len(snapshot):len(snapshot)], 0)},
		{"cut short", nil, snapshot[:len(snapshot)-1]},
		{"an empty part", nil, nil},
		{"an unknown kind", nil, []byte{version, 'Z'}},
		{"a delta of no session", nil, delta},
		{"an unknown op", goldenState(), []byte{version, kindDelta, 'z'}},
		{"more subscriptions than bytes", nil, unhex(t, "0153"+"0000"+"13"+strings.Repeat("00", 18)+"ffffffff0f")},
		{"a malformed peer", nil, unhex(t, "0153"+"0000"+"09"+"00000000"+"0378793a")},
		{"a record without its length", nil, unhex(t, "0153"+"0000"+"00")},
	} {
		_, err := decodePart(c.st, c.b, nil)
		assert.ErrorIs(t, err, errCorrupt, c.name)
	}
	_, err := decodePart(nil, append([]byte{2}, snapshot[1:]...), nil)
	assert.ErrorContains(t, err, "natsjs: a session log part of an unknown encoding 2")
}

func BenchmarkCodec(b *testing.B) {
	st := goldenState()
	snapshot := encodeSnapshot(st)
	b.Run("EncodeSnapshot", func(b *testing.B) {
		for b.Loop() {
			encodeSnapshot(st)
		}
	})
	b.Run("DecodeSnapshot", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodePart(nil, snapshot, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
