// Package bench compares mqtthooks with its peers. It holds benchmarks only, in
// a package of its own, so that the mqtthooks package never imports a peer.
package bench
