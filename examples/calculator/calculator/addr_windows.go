package calculator

// DefaultAddr is the address the server and client commands use unless
// given -addr. Abstract unix sockets exist only on Linux, and shared memory
// is not built on Windows yet: TCP on the loopback.
const DefaultAddr = "tcp:127.0.0.1:4000"
