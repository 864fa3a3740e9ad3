package pebble

// pages is a sparse array indexed by message id. The Core hands out message
// ids in sequence, so the ids alive at once lie close together, and a page
// of them costs a fraction of what as many map entries do: at a restart of
// ten million queued messages, the difference is seconds and gigabytes.
type pages[T comparable] struct {
	m  map[uint64]*page[T]
	hi uint64 // the highest page set so far: ids come in sequence, so it fills next
}

const pageBits = 12

type page[T comparable] struct {
	v    [1 << pageBits]T
	live int // values that are not the zero value
}

// get returns the value at id, or the zero value.
func (p *pages[T]) get(id uint64) T {
	if pg := p.m[id>>pageBits]; pg != nil {
		return pg.v[id&(1<<pageBits-1)]
	}
	var zero T
	return zero
}

// set stores v at id; a page whose values are all zero goes, unless it is
// the page new ids still come to: else a queue that holds one message at a
// time would allocate a page for each.
func (p *pages[T]) set(id uint64, v T) {
	var zero T
	k := id >> pageBits
	pg := p.m[k]
	if pg == nil {
		if v == zero {
			return
		}
		if p.m == nil {
			p.m = map[uint64]*page[T]{}
		}
		pg = new(page[T])
		p.m[k] = pg
		if k > p.hi {
			if old := p.m[p.hi]; old != nil && old.live == 0 {
				delete(p.m, p.hi) // kept while new ids came to it, which they no longer do
			}
			p.hi = k
		}
	}
	slot := &pg.v[id&(1<<pageBits-1)]
	switch {
	case *slot == zero && v != zero:
		pg.live++
	case *slot != zero && v == zero:
		pg.live--
	}
	*slot = v
	if pg.live == 0 && k < p.hi {
		delete(p.m, k)
	}
}
