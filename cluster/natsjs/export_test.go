package natsjs

import "github.com/mqtthooks/mqtthooks"

// OwnerKey exposes ownerKey to the tests of package natsjs_test.
func OwnerKey(id mqtthooks.SubscriberID) string { return ownerKey(id) }
