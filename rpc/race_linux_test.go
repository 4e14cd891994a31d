//go:build race && linux

package rpc_test

const raceEnabled = true
