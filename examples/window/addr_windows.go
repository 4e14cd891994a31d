package main

// defaultAddr: the shared-memory rendezvous is not built on Windows yet, so
// TCP on the loopback.
const defaultAddr = "tcp:127.0.0.1:4100"

// privateAddr is an address for one run of the demo or a test: a port the
// system chooses.
func privateAddr(string) string { return "tcp:127.0.0.1:0" }
