package mqtthooks

import "crypto/rand"

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// generateClientID returns "auto-" and 18 base62 characters from crypto/rand:
// 23 bytes, the length every MQTT server must accept, and about 107 bits.
func generateClientID() string {
	var id [5 + 18]byte
	copy(id[:], "auto-")
	var random [18]byte
	for i := 0; i < len(random); {
		_, _ = rand.Read(random[i:]) // crypto/rand never fails (Go 1.24+)
		for ; i < len(random); i++ {
			if random[i] >= 62*4 { // reject to keep the characters uniform
				break
			}
			id[5+i] = base62[random[i]%62]
		}
	}
	return string(id[:])
}
