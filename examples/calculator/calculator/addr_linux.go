package calculator

// DefaultAddr is the address the server and client commands use unless
// given -addr: shared memory, negotiated on a Linux abstract unix socket.
const DefaultAddr = "shm-abstract:capnshm-calculator"
