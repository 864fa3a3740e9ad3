package webhooks

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"

	"github.com/mqtthooks/mqtthooks"
)

// ignored are modifiers VerneMQ's webhooks accept that have no counterpart
// here; an endpoint may send them, and they change nothing.
var ignored = map[string]bool{"allow_register": true, "allow_publish": true, "allow_subscribe": true,
	"allow_unsubscribe": true, "max_connection_lifetime": true, "retry_interval": true, "max_drain_time": true,
	"max_msgs_per_drain_step": true, "shared_subscription_policy": true}

// modifiers maps an endpoint's modifiers onto mqtthooks.Modifiers, as
// VerneMQ names them; nil for none. A key outside VerneMQ's list, or a
// value of the wrong type, is an error naming it (the core validates the
// values themselves, as for any plugin).
func modifiers(raw map[string]json.RawMessage, v5 bool) (*mqtthooks.Modifiers, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	m := new(mqtthooks.Modifiers)
	var clientID, mountpoint *string
	for key, v := range raw {
		var err error
		switch key {
		case "username":
			var s string
			if err = json.Unmarshal(v, &s); err == nil {
				m.Username = mqtthooks.Some(s)
			}
		case "client_id", "mountpoint":
			var s string
			if err = json.Unmarshal(v, &s); err == nil {
				if key == "client_id" {
					clientID = &s
				} else {
					mountpoint = &s
				}
			}
		case "subscriber_id":
			var id struct {
				ClientID   *string `json:"client_id"`
				Mountpoint *string `json:"mountpoint"`
			}
			if err = json.Unmarshal(v, &id); err == nil && (id.ClientID == nil || id.Mountpoint == nil) {
				err = fmt.Errorf("wants client_id and mountpoint")
			}
			clientID, mountpoint = id.ClientID, id.Mountpoint
		case "clean_session":
			var b bool
			if err = json.Unmarshal(v, &b); err == nil && !v5 { // MQTT 5 ignores it, as VerneMQ does
				m.CleanStart = mqtthooks.Some(b)
				m.Persistent = mqtthooks.Some(!b) // MQTT 3: also whether the session outlives the connection
			}
		case "max_message_size":
			err = number(v, 0, func(n int64) {
				if n > 0 {
					m.MaximumPacketSize = mqtthooks.Some(uint32(n))
				}
			})
		case "max_inflight_messages":
			err = number(v, 0, func(n int64) { m.MaxInflightMessages = mqtthooks.Some(int(n)) })
		case "max_online_messages":
			err = number(v, -1, func(n int64) { m.MaxOnlineMessages = mqtthooks.Some(int(n)) })
		case "max_offline_messages":
			err = number(v, -1, func(n int64) { m.MaxOfflineMessages = mqtthooks.Some(int(n)) })
		case "max_message_rate":
			err = number(v, 0, func(n int64) { m.MaxMessageRate = mqtthooks.Some(uint32(n)) })
		case "upgrade_qos":
			var b bool
			if err = json.Unmarshal(v, &b); err == nil {
				m.UpgradeQoS = mqtthooks.Some(b)
			}
		case "queue_type":
			var s string
			if err = json.Unmarshal(v, &s); err == nil {
				switch s {
				case "fifo":
					m.QueueType = mqtthooks.Some(mqtthooks.QueueFIFO)
				case "lifo":
					m.QueueType = mqtthooks.Some(mqtthooks.QueueLIFO)
				default:
					err = fmt.Errorf("%q is neither fifo nor lifo", s)
				}
			}
		case "properties":
			if !v5 {
				err = fmt.Errorf("only for MQTT 5")
				break
			}
			err = properties(v, m)
		default:
			if !ignored[key] {
				err = fmt.Errorf("not a modifier")
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: modifier %q: %v", ErrInvalidResponse, key, err)
		}
	}
	switch {
	case clientID != nil && mountpoint != nil:
		m.SubscriberID = mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: *mountpoint, ClientID: *clientID})
	case clientID != nil || mountpoint != nil:
		return nil, fmt.Errorf("%w: client_id and mountpoint go together", ErrInvalidResponse)
	}
	return m, nil
}

// number reads a JSON number of at least min, rounding a fraction as
// VerneMQ does.
func number(v json.RawMessage, min int64, set func(int64)) error {
	var f float64
	if err := json.Unmarshal(v, &f); err != nil {
		return err
	}
	n := math.Round(f)
	if math.IsNaN(f) || n < float64(min) || n > math.MaxInt32 {
		return fmt.Errorf("%v is out of range", f)
	}
	set(int64(n))
	return nil
}

// properties reads the properties modifier: p_user_property (base64 keys
// and values) and p_session_expiry_interval.
func properties(v json.RawMessage, m *mqtthooks.Modifiers) error {
	var p struct {
		UserProperties []userProperty `json:"p_user_property"`
		SEI            *float64       `json:"p_session_expiry_interval"`
	}
	if err := json.Unmarshal(v, &p); err != nil {
		return err
	}
	if p.SEI != nil {
		n := math.Round(*p.SEI)
		if n < 0 || n > math.MaxUint32 {
			return fmt.Errorf("p_session_expiry_interval %v is out of range", *p.SEI)
		}
		m.SessionExpiryInterval = mqtthooks.Some(uint32(n))
	}
	if p.UserProperties != nil {
		ups := make([]mqtthooks.UserProperty, len(p.UserProperties))
		for i, u := range p.UserProperties {
			k, err1 := base64.StdEncoding.DecodeString(u.Key)
			val, err2 := base64.StdEncoding.DecodeString(u.Val)
			if err1 != nil || err2 != nil {
				return fmt.Errorf("p_user_property %d is not base64", i)
			}
			ups[i] = mqtthooks.UserProperty{Key: string(k), Value: string(val)}
		}
		m.UserProperties = mqtthooks.Some(ups)
	}
	return nil
}
