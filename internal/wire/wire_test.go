package wire_test

import (
	"encoding/hex"
	"errors"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/internal/wire"
)

var errBad = errors.New("bad")

// The message and its encoding that both stores keep (their golden tests
// pin it too): every optional field set, an empty but set Correlation Data,
// the largest Message Expiry Interval.
var goldenMessage = &mqtthooks.Message{Topic: "a/b", Payload: []byte("hi"), QoS: 2, Retain: true,
	Properties: mqtthooks.PublishProperties{PayloadFormatIndicator: 1,
		MessageExpiryInterval: mqtthooks.Some(uint32(math.MaxUint32)), ContentType: "ct", ResponseTopic: "rt",
		CorrelationData: []byte{}, UserProperties: []mqtthooks.UserProperty{{Key: "k", Value: "v"}, {}}}}

const goldenMessageHex = "03612f62" + "036869" + "02" + "01" + "01" + "01" + "ffffffff0f" + "026374" + "027274" +
	"01" + "03" + "016b" + "0176" + "00" + "00"

func TestAppend(t *testing.T) {
	for _, c := range []struct {
		name string
		got  []byte
		want string
	}{
		{"empty string", wire.AppendString(nil, ""), "00"},
		{"string", wire.AppendString([]byte{0xff}, "ab"), "ff" + "026162"},
		{"nil bytes", wire.AppendOptBytes(nil, nil), "00"},
		{"empty bytes", wire.AppendOptBytes(nil, []byte{}), "01"},
		{"bytes", wire.AppendOptBytes(nil, []byte{0}), "0200"},
		{"false", wire.AppendBool(nil, false), "00"},
		{"true", wire.AppendBool(nil, true), "01"},
		{"zero time", wire.AppendTime(nil, time.Time{}), "00"},
		{"time", wire.AppendTime(nil, time.Unix(0, 1)), "02"},
		{"time before 1970", wire.AppendTime(nil, time.Unix(0, -1)), "01"},
		{"message", wire.AppendMessage(nil, goldenMessage), goldenMessageHex},
		{"plain message", wire.AppendMessage(nil, &mqtthooks.Message{Topic: "t"}),
			"0174" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00" + "00"},
		{"zero message", wire.AppendMessage(nil, &mqtthooks.Message{Payload: []byte{},
			Properties: mqtthooks.PublishProperties{MessageExpiryInterval: mqtthooks.Some(uint32(0)),
				UserProperties: []mqtthooks.UserProperty{}}}),
			"00" + "01" + "00" + "00" + "00" + "01" + "00" + "00" + "00" + "00" + "01"},
	} {
		if got := hex.EncodeToString(c.got); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

func decoderOf(t *testing.T, s string) *wire.Decoder {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return wire.NewDecoder(b, errBad)
}

func TestDecoder(t *testing.T) {
	d := decoderOf(t, "ffffffffffffffffff01"+"ffffffffffffffffff01"+"07"+"02"+"0161"+"02ab"+"01"+"00"+"01"+"00"+"02"+
		"02"+"0000")
	got := []any{d.Uvarint(), d.Varint(), d.Byte(), d.Bool(), d.Str(), d.OptBytes(), d.OptBytes(), d.OptBytes(),
		d.Time(), d.Time(), d.Time(), d.Count()}
	want := []any{uint64(math.MaxUint64), int64(math.MinInt64), byte(7), true, "a", []byte{0xab}, []byte{},
		[]byte(nil), time.Unix(0, -1), time.Time{}, time.Unix(0, 1), 2}
	if !reflect.DeepEqual(got, want) || d.Err() != nil || d.Len() != 2 {
		t.Fatalf("read %v (%v, %d left), want %v", got, d.Err(), d.Len(), want)
	}
	if err := d.End(); !errors.Is(err, errBad) {
		t.Fatalf("End with 2 bytes left: %v", err)
	}

	d = decoderOf(t, goldenMessageHex)
	if m := d.Message(); !reflect.DeepEqual(m, goldenMessage) || d.End() != nil {
		t.Fatalf("read %+v (%v), want %+v", m, d.Err(), goldenMessage)
	}

	input, _ := hex.DecodeString("02ab" + "cd" + "01")
	d = wire.NewDecoder(input, errBad)
	p, raw := d.OptBytes(), d.Raw(1)
	_ = append(raw, 0xee)
	input[1] = 0
	if !reflect.DeepEqual(p, []byte{0xab}) || input[3] != 1 || !reflect.DeepEqual(d.Rest(), []byte{1}) ||
		d.Len() != 0 || d.End() != nil {
		t.Fatalf("OptBytes %x, Raw %x, input %x", p, raw, input)
	}
}

// The first error sticks; later reads and errors change nothing.
func TestDecoderSticks(t *testing.T) {
	for _, c := range []struct {
		name  string
		input string
		read  func(*wire.Decoder)
	}{
		{"uvarint past the end", "80", func(d *wire.Decoder) { d.Uvarint() }},
		{"uvarint overflow", "ffffffffffffffffff02" + "01", func(d *wire.Decoder) { d.Uvarint() }},
		{"varint past the end", "", func(d *wire.Decoder) { d.Varint() }},
		{"byte past the end", "", func(d *wire.Decoder) { d.Byte() }},
		{"string past the end", "0361", func(d *wire.Decoder) { d.Str() }},
		{"bytes past the end", "ffffffffffffffffff01" + "01", func(d *wire.Decoder) { d.OptBytes() }},
		{"raw past the end", "0001", func(d *wire.Decoder) { d.Raw(3) }},
		{"count past the end", "03" + "0000", func(d *wire.Decoder) { d.Count() }},
		{"user properties past the end", "0174" + "000000000000000000" + "05" + "0000",
			func(d *wire.Decoder) { d.Message() }},
	} {
		d := decoderOf(t, c.input)
		c.read(d)
		d.Fail(errors.New("later"))
		if !errors.Is(d.Err(), errBad) || d.Len() != 0 || d.Rest() != nil || d.Uvarint() != 0 || d.Bool() ||
			d.Str() != "" || d.OptBytes() != nil || d.Count() != 0 || !d.Time().IsZero() || d.End() != d.Err() {
			t.Errorf("%s: %v, %d bytes left", c.name, d.Err(), d.Len())
		}
	}
}

// FuzzDecoder reads arbitrary input as a message, and as fields in an order
// the input picks: no read panics (the fuzzer reports it), the error is the
// caller's, and a message read re-encodes to one that reads back the same.
func FuzzDecoder(f *testing.F) {
	golden, _ := hex.DecodeString(goldenMessageHex)
	for _, seed := range [][]byte{nil, {0}, golden, golden[:len(golden)-3], wire.AppendMessage(nil, &mqtthooks.Message{}),
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, {0x80}, {5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9}} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		d := wire.NewDecoder(input, errBad)
		m := d.Message()
		if d.Err() != nil {
			if !errors.Is(d.Err(), errBad) || d.Len() != 0 {
				t.Fatalf("%v, %d bytes left", d.Err(), d.Len())
			}
		} else {
			again := wire.NewDecoder(wire.AppendMessage(nil, m), errBad)
			if m2 := again.Message(); again.End() != nil || !reflect.DeepEqual(m, m2) {
				t.Fatalf("%+v reads back as %+v (%v)", m, m2, again.Err())
			}
		}

		d = wire.NewDecoder(input, errBad)
		for d.Len() > 0 {
			switch d.Byte() % 11 {
			case 0:
				d.Uvarint()
			case 1:
				d.Varint()
			case 2:
				d.Bool()
			case 3:
				d.Raw(uint64(d.Byte()))
			case 4:
				d.Str()
			case 5:
				d.OptBytes()
			case 6:
				d.Time()
			case 7:
				d.Count()
			case 8:
				d.Message()
			case 9:
				d.End()
			case 10:
				d.Rest()
			}
		}
		if err := d.Err(); err != nil && !errors.Is(err, errBad) {
			t.Fatal(err)
		}
	})
}
