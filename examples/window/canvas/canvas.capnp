# The protocol of examples/window: a window that RPC calls draw into.
@0x82d4b98562c59931;

using Go = import "/go.capnp";
$Go.package("canvas");
$Go.import("github.com/capnshm/capnshm/examples/window/canvas");

interface Canvas {
  draw @0 (color :UInt32) -> (frame :UInt64);
  # Fills the window with color (0xRRGGBB), on the window's thread, and
  # returns how many frames have been drawn.

  status @1 () -> (status :Status);
  # What the window and its loop have done so far.
}

struct Status {
  frames @0 :UInt64;
  # Draw calls served.

  pumps @1 :UInt64;
  # Runs of the window system's event pump.

  events @2 :UInt64;
  # Window-system events (X11) or messages (Windows) the window handled.

  pings @3 :UInt64;
  # Liveness checks answered: _NET_WM_PING (X11), the check message that
  # SendMessageTimeout sends (Windows).

  windowThread @4 :UInt64;
  # OS thread ID of the window's thread.

  handlerThread @5 :UInt64;
  # OS thread ID this status call ran on.

  offThread @6 :UInt64;
  # Handlers that ran on a thread other than the window's (0, or a bug).

  maxPumpGapMicros @7 :UInt64;
  # The longest time between two pump runs.

  maxPumpDelayMicros @8 :UInt64;
  # The loop's bound on that gap (MaxPumpDelay); the gap may exceed it by
  # the batches of one turn.
}
