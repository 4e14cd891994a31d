// Package echoproto is the test and benchmark protocol of capnshm (see
// echo.capnp): the generated Cap'n Proto code and a server implementation
// that the conformance suite, the benchmarks and bench/ share.
package echoproto

//go:generate sh -c "capnp compile -I $(go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std -ogo echo.capnp"
