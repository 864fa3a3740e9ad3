package natsjs

import "github.com/mqtthooks/mqtthooks"

// OwnerKey exposes ownerKey to the tests of package natsjs_test.
func OwnerKey(id mqtthooks.SubscriberID) string { return ownerKey(id) }

// AuditHeld exposes auditHeld to the tests of package natsjs_test.
func AuditHeld(c *Cluster, keys ...string) { c.auditHeld(keys) }
