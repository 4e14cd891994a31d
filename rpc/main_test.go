package rpc_test

import (
	"testing"

	"github.com/capnshm/capnshm/internal/peertest"
)

func TestMain(m *testing.M) { peertest.Main(m) }
