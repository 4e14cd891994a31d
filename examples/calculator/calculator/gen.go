// Package calculator is the classic Cap'n Proto calculator (see
// calculator.capnp, with the structure of the C++ sample): the generated
// code and a server, shared by the server and client commands, the tests
// and, through the same schema, the C++ client in ../cpp.
package calculator

//go:generate sh -c "capnp compile -I $(go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std -ogo calculator.capnp"
