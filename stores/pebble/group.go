package pebble

import "github.com/cockroachdb/pebble/v2"

// pendingValue is a write not yet in Pebble: a value, or a deletion.
type pendingValue struct {
	val []byte
	del bool
	// fresh: when first written, the key was stored nowhere (not in Pebble,
	// not in a group), so deleting it again leaves nothing to write.
	fresh bool
}

// writer is where prepare puts a batch's writes: a Pebble batch, or an
// overlay that joins the writer's group.
type writer interface {
	// put sets key to val; fresh tells that key is stored nowhere yet.
	put(key, val []byte, fresh bool)
	del(key []byte)
	delRange(start, end []byte)
}

type pebbleWriter struct{ b *pebble.Batch }

func (w pebbleWriter) put(key, val []byte, _ bool) { _ = w.b.Set(key, val, nil) }
func (w pebbleWriter) del(key []byte)              { _ = w.b.Delete(key, nil) }
func (w pebbleWriter) delRange(start, end []byte)  { _ = w.b.DeleteRange(start, end, nil) }

// overlay gathers one batch's writes, to merge into the pending group once
// the whole batch checked out.
type overlay struct{ m map[string]pendingValue }

// overlay returns an empty overlay, reusing the store's. s.mu is held.
func (s *Store) overlay() overlay {
	if s.scratch == nil {
		s.scratch = map[string]pendingValue{}
	}
	clear(s.scratch)
	return overlay{s.scratch}
}

func (o overlay) put(key, val []byte, fresh bool) {
	if p, ok := o.m[string(key)]; ok {
		fresh = p.fresh
	}
	o.m[string(key)] = pendingValue{val: val, fresh: fresh}
}

func (o overlay) del(key []byte) {
	if p, ok := o.m[string(key)]; ok && p.fresh {
		delete(o.m, string(key))
		return
	}
	o.m[string(key)] = pendingValue{del: true}
}

// delRange is never called on an overlay: a batch that drops a session's
// keys is applied directly (see Commit and dropsLife).
func (o overlay) delRange(start, end []byte) {
	panic("pebble store: a range deletion reached the group")
}

// mergeInto adds the overlay's writes to group, in order after what it has:
// a key group holds fresh and the overlay deletes is dropped from it.
func (o overlay) mergeInto(group map[string]pendingValue) {
	for k, v := range o.m {
		p, ok := group[k]
		switch {
		case v.del && ok && p.fresh:
			delete(group, k)
		case v.del:
			group[k] = pendingValue{del: true}
		case ok:
			group[k] = pendingValue{val: v.val, fresh: p.fresh}
		default:
			group[k] = v
		}
	}
}
