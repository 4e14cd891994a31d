package main

// The addresses of the receiver on Windows: named pipes.
const (
	shmScheme    = "shm"
	streamScheme = "pipe"
	streamLabel  = "named pipe"
)
