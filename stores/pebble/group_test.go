package pebble

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A key written fresh and deleted before its group is applied leaves
// nothing to write; a key stored before leaves a deletion; the last write of
// a key wins, and keeps whether the key was fresh.
func TestOverlayMerge(t *testing.T) {
	group := map[string]pendingValue{}
	o := overlay{map[string]pendingValue{}}
	o.put([]byte("new"), []byte("1"), true)
	o.put([]byte("old"), []byte("1"), false)
	o.put([]byte("new"), []byte("2"), false) // a state change: still fresh
	o.mergeInto(group)
	assert.Equal(t, pendingValue{val: []byte("2"), fresh: true}, group["new"])
	assert.Equal(t, pendingValue{val: []byte("1")}, group["old"])

	o = overlay{map[string]pendingValue{}}
	o.del([]byte("new"))
	o.del([]byte("old"))
	o.del([]byte("elsewhere")) // stored in Pebble or in the group being applied
	o.mergeInto(group)
	_, ok := group["new"]
	assert.False(t, ok, "written and deleted within the group: nothing to write")
	assert.Equal(t, pendingValue{del: true}, group["old"])
	assert.Equal(t, pendingValue{del: true}, group["elsewhere"])

	o = overlay{map[string]pendingValue{}}
	o.put([]byte("x"), []byte("1"), true)
	o.del([]byte("x"))
	assert.Empty(t, o.m, "within one batch too")
}
