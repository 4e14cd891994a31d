// Package echo is a small Cap'n Proto interface and its server, for the
// README's snippets and for trying capnshm out: ping, echo and sum. Its
// schema is echo.capnp; echo.capnp.go is generated from it.
//
//	srv, _ := rpc.Listen("shm:/run/echo.sock", capnp.Client(echo.Echo_ServerToClient(echo.Server{})))
package echo

//go:generate sh -c "capnp compile -I $(go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std -ogo echo.capnp"
