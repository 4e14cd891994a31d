// Package canvas is the protocol of examples/window (see canvas.capnp): a
// window that RPC calls draw into, and its status.
package canvas

//go:generate sh -c "capnp compile -I $(go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std -ogo canvas.capnp"
