package webhooks

import (
	"encoding/json"
	"testing"
)

// FuzzAnswer feeds an endpoint's answer, anything at all, to the decoder and
// the modifier mapping: they return a result or an error, and never panic
// (nothing recovers here, so a panic fails the fuzzer).
func FuzzAnswer(f *testing.F) {
	for _, seed := range []string{`{"result":"ok"}`, `{"result":"next"}`, `{"result":{"error":"x","reason_code":135}}`,
		`{"result":"ok","modifiers":{"username":"u","client_id":"c","mountpoint":"m","max_message_size":1000.4}}`,
		`{"result":"ok","modifiers":[]}`, `{"result":"ok","modifiers":{"properties":{"p_user_property":[{"key":"azE=","val":"djE="}],"p_session_expiry_interval":5}}}`,
		`{}`, `[]`, `null`, `{"result":{"error":null,"reason_code":1e300}}`} {
		f.Add([]byte(seed), true)
	}
	f.Fuzz(func(t *testing.T, raw []byte, v5 bool) {
		var a answer
		if err := decodeAnswer(raw, &a); err != nil {
			return
		}
		if a.Result == "" && a.Error == nil {
			t.Fatalf("decoded %q into neither a result nor an error", raw)
		}
		m, err := modifiers(a.Modifiers, v5)
		if err == nil && m != nil {
			_, _ = json.Marshal(m.Username)
		}
	})
}
