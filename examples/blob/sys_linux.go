package main

// The addresses of the receiver on Linux: abstract unix sockets.
const (
	shmScheme    = "shm-abstract"
	streamScheme = "unix-abstract"
	streamLabel  = "unix socket"
)
