// Package calculator is the classic Cap'n Proto calculator (see
// calculator.capnp: the C++ sample's schema, with its ids): the generated
// code, a server and the checks a client runs (RunChecks,
// RunTailCallCheck), shared by the server and client commands, the tests
// and, through the same schema, the C++ client and server in ../cpp and
// the official C++ samples.
package calculator

//go:generate sh -c "capnp compile -I $(go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std -ogo calculator.capnp"
