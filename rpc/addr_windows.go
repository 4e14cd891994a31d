package rpc

// shmOverPipe: on Windows a shm: address names a named pipe.
const shmOverPipe = true
