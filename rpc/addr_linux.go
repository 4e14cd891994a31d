package rpc

// shmOverPipe: on Linux a shm: address names a unix socket file.
const shmOverPipe = false
