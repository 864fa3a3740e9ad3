package pebble

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// pages keeps values by id, drops pages that emptied behind the ids in use,
// and keeps the page new ids come to, so that one message at a time does not
// cost a page each.
func TestPages(t *testing.T) {
	var p pages[int64]
	assert.Zero(t, p.get(5))
	p.set(5, 0)
	assert.Empty(t, p.m, "setting zero allocates nothing")
	for id := uint64(1); id <= 3*(1<<pageBits); id++ {
		p.set(id, 1) // one alive at a time, in sequence
		assert.Equal(t, int64(1), p.get(id))
		p.set(id, 0)
	}
	assert.Len(t, p.m, 1, "only the newest page stays, empty")
	p.set(1<<pageBits+7, 2) // an old page comes back while needed
	assert.Equal(t, int64(2), p.get(1<<pageBits+7))
	p.set(1<<pageBits+7, 0)
	assert.Len(t, p.m, 1)
	assert.Zero(t, p.get(1<<pageBits+7))
}
