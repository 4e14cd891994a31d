package rpc

// idTable holds the entries of a table whose IDs this side chooses
// (questions, exports, embargoes): a slice indexed by ID, and the freed IDs,
// the most recently freed reused first. IDs stay small and dense, as the
// protocol's tables assume. Not safe for concurrent use: the Conn's mutex
// guards every table.
type idTable[T any] struct {
	entries []T
	used    []bool
	free    []uint32
	n       int // entries in use
}

// add stores v under a new ID and returns the ID.
func (t *idTable[T]) add(v T) uint32 {
	t.n++
	if k := len(t.free); k > 0 {
		id := t.free[k-1]
		t.free = t.free[:k-1]
		t.entries[id], t.used[id] = v, true
		return id
	}
	t.entries = append(t.entries, v)
	t.used = append(t.used, true)
	return uint32(len(t.entries) - 1)
}

// get returns the entry of id and whether it exists.
func (t *idTable[T]) get(id uint32) (T, bool) {
	if uint64(id) >= uint64(len(t.entries)) || !t.used[id] {
		var zero T
		return zero, false
	}
	return t.entries[id], true
}

// remove frees id (which must be in use).
func (t *idTable[T]) remove(id uint32) {
	var zero T
	t.entries[id], t.used[id] = zero, false
	t.free = append(t.free, id)
	t.n--
}

// len returns the number of entries in use.
func (t *idTable[T]) len() int { return t.n }

// each calls f for every entry in use.
func (t *idTable[T]) each(f func(id uint32, v T)) {
	for id, u := range t.used {
		if u {
			f(uint32(id), t.entries[id])
		}
	}
}
