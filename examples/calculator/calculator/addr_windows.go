package calculator

// DefaultAddr is the address the server and client commands use unless
// given -addr: shared memory, negotiated on the named pipe
// \\.\pipe\capnshm-calculator.
const DefaultAddr = "shm:capnshm-calculator"
